"""dpo's message when sampling gave no preference pair: an InputError naming what decides good and bad, raised
by the stage itself before any training or output."""

import logging
from pathlib import Path

import pyarrow as pa
import pytest

from safeclip.io import InputError
from safeclip.params import Dpo, load_params
from safeclip.world.catalogue import POSITIONS, UNSAFE_TWIN
from safeclip.world.grammar import caption
from safeclip.world.scene import enumerate_scenes

ROOT = Path(__file__).resolve().parents[2]


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


SAFE = [s for s in enumerate_scenes(tuple(UNSAFE_TWIN), tuple(POSITIONS)) if len(s.objects) == 1][:20]


@pytest.mark.parametrize("samples, seen", [
    (lambda s: [caption(s)] * 4, "20 of 20 prompts had no good sample"),  # copies: never unsafe
    (lambda s: [caption(s.unsafe_twin())] * 4, "20 of 20 prompts had only good samples"),  # all exact twins
])
def test_the_stage_stops_with_it_before_training(monkeypatch, tmp_path, capsys, samples, seen):
    """stages.dpo.main on sampled rewrites (the oracle scores them) that yield no pair: exit 2 with the message,
    no trainer built and nothing written."""
    import stages.dpo as stage

    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "start", lambda name: (params, logging.getLogger("test")))
    monkeypatch.setattr(stage, "load_causal_lm", lambda *a, **k: (pytest.importorskip("torch").nn.Linear(1, 1), None))
    monkeypatch.setattr(stage, "read_parquet", lambda *a, **k: pa.table({"caption": [caption(s) for s in SAFE]}))
    by_caption = {caption(s): samples(s) for s in SAFE}
    monkeypatch.setattr(stage, "rewrite_sharded", lambda model, tok, prompts, **kw: [by_caption[p] for p in prompts])
    monkeypatch.setattr(stage, "build_dpo_trainer", lambda *a, **k: pytest.fail("trained without a pair"))
    with pytest.raises(SystemExit) as exit_:
        stage.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "dpo: no preference pairs (8 samples per prompt)" in err and seen in err, err
    assert not any(tmp_path.rglob("*"))
