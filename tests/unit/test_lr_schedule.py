"""The training loops' lr multiplier (make_safe and base_sd), against hand-computed values."""

from __future__ import annotations

import pytest

from safeclip.clip.training import lr_factor


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


def test_warmup_ramps_linearly_then_holds_as_base_sd_uses_it():
    f = lr_factor("constant", 1000, warmup=4)
    assert [f(s) for s in (0, 1, 2, 3, 4, 500)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    g = lr_factor("cosine", 10, warmup=2)
    assert g(0) == 0.5 and g(5) == pytest.approx(0.5)  # the warmup's 1/2 times the cosine's 1
    assert lr_factor("constant", 10, warmup=0)(0) == 1.0
