"""eval_attack resumes its checkpoint (search state, image shards) only when everything it was made from is
unchanged: base SD included, since the shards are base SD's images."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeclip.params import Params

INPUTS = ("models/safe/uwm/model.safetensors", "data/embeddings/uwm.safetensors",
          "data/embeddings/none.safetensors", "data/visu/test.parquet",
          "models/base_sd/unet/diffusion_pytorch_model.safetensors")


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel in INPUTS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("changed", INPUTS)
def test_every_input_moves_the_fingerprint(run_dir: Path, changed: str) -> None:
    from stages.eval_attack import checkpoint_fingerprint

    params = Params()
    before = checkpoint_fingerprint(params, "uwm", ["knife"])
    assert checkpoint_fingerprint(params, "uwm", ["knife"]) == before  # deterministic: a rerun resumes
    (run_dir / changed).write_bytes(b"retrained")
    assert checkpoint_fingerprint(params, "uwm", ["knife"]) != before, changed


def test_params_and_banned_words_move_the_fingerprint(run_dir: Path) -> None:
    from stages.eval_attack import checkpoint_fingerprint

    params = Params()
    before = checkpoint_fingerprint(params, "uwm", ["knife"])
    assert checkpoint_fingerprint(params, "uwm", ["knife", "gun"]) != before
    sampled = params.model_copy(update={"eval_generation": params.eval_generation.model_copy(
        update={"num_inference_steps": 20})})
    assert checkpoint_fingerprint(sampled, "uwm", ["knife"]) != before
