"""The make_safe trainers' lr multiplier, against hand-computed values."""

from __future__ import annotations

import pytest

from safeclip.methods.trainer import lr_factor


def test_constant_is_one_everywhere():
    f = lr_factor("constant", 10)
    assert [f(s) for s in (0, 5, 9, 50)] == [1.0] * 4


def test_cosine_from_one_to_zero():
    f = lr_factor("cosine", 10)
    assert f(0) == 1.0
    assert f(5) == pytest.approx(0.5)  # half way: (1 + cos(pi/2)) / 2
    assert f(2) == pytest.approx((1 + 0.8090169943749475) / 2)  # cos(pi/5)
    assert f(10) == pytest.approx(0.0) and f(99) == pytest.approx(0.0)  # past the end: stays at 0


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("linear", 10)
