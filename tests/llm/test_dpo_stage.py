"""dpo's message when sampling gave no preference pair: an InputError naming what decides good and bad."""

import pytest

from safeclip.io import InputError
from safeclip.params import Dpo


def test_no_pairs_names_the_scorer_thresholds():
    from stages.dpo import no_pairs_error

    e = no_pairs_error(Dpo(scorer="models"), n=10, all_good=0, no_good=10)
    assert isinstance(e, InputError)
    for piece in ("no preference pairs", "10 of 10 prompts had no good sample", "dpo.models.threshold",
                  "dpo.models.min_similarity", "dpo.models.unsafe_label", "dpo.k", "dpo.temperature"):
        assert piece in str(e), str(e)
    e = no_pairs_error(Dpo(scorer="models"), n=4, all_good=4, no_good=0)
    assert "4 of 4 prompts had only good samples" in str(e) and "raise dpo.models.threshold" in str(e)
    assert "oracle" in str(no_pairs_error(Dpo(), n=3, all_good=0, no_good=3))


def test_dpo_stage_raises_it_not_a_runtime_error():
    import inspect

    import stages.dpo

    src = inspect.getsource(stages.dpo.main)
    assert "raise no_pairs_error(" in src and "RuntimeError" not in src
    with pytest.raises(InputError):
        raise stages.dpo.no_pairs_error(Dpo(), 1, 0, 1)
