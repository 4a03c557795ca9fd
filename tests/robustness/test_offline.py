"""Offline behaviour: with HF_HUB_OFFLINE=1, an empty cache and a hub id that is not in it, a stage fails fast
with a message saying how to provide the weights (a local path, or a copied cache), instead of hanging."""

from __future__ import annotations

import time

import pytest

from tests.robustness.util import leftovers, make_workspace, run_in_process, run_subprocess

FAST = 60.0  # seconds: far above the ~1 s a refusal takes, far below a network timeout's retries


def assert_fails_fast(r, seconds: float, ws, source: str, param: str, outputs: tuple[str, ...]) -> None:
    assert seconds < FAST, f"took {seconds:.0f} s"
    assert r.code == 2, r
    assert "Traceback" not in r.err, r
    message = r.err[r.err.index("error: "):]
    for piece in (source, "HF_HUB_OFFLINE=1", "cache", param, "local folder"):
        assert piece in message, f"{piece!r} not in:\n{message}"
    assert leftovers(ws, outputs) == []


def test_captions_with_an_uncached_visu_text_fails_fast_in_a_fresh_process(tmp_path, empty_hf_home):
    """A real `python -m stages.captions` with an empty HF_HOME: nothing is reached for, nothing hangs."""
    ws = make_workspace(tmp_path / "ws", {"captions": {"source": "visu-hf",
                                                       "visu_hf": {"dataset": "someorg/not-cached-dataset"}}})
    r, seconds = run_subprocess(ws, "stages.captions", env=empty_hf_home, timeout=int(FAST) + 60)
    assert_fails_fast(r, seconds, ws, "someorg/not-cached-dataset", "captions.visu_hf.dataset",
                      ("data/captions", "metrics/captions.json"))
    assert not any((tmp_path / "hf-home").rglob("*.parquet")), "nothing was downloaded"


@pytest.mark.parametrize("stage, params, source, param, outputs", [
    ("base_clip", {"base_clip": {"source": "someorg/not-cached-model"}}, "someorg/not-cached-model",
     "base_clip.source", ("models/base_clip", "metrics/base_clip.json")),
    ("base_llm", {"base_llm": {"source": "someorg/not-cached-llm"}}, "someorg/not-cached-llm", "base_llm.source",
     ("models/base_llm", "metrics/base_llm.json")),
    ("base_sd", {"base_sd": {"source": "someorg/not-cached-sd"}}, "someorg/not-cached-sd", "base_sd.source",
     ("models/base_sd", "metrics/base_sd.json")),
    ("dpo", {"dpo": {"scorer": "models", "models": {"nsfw_classifier": "someorg/not-cached-classifier"}}},
     "someorg/not-cached-classifier", "dpo.models.nsfw_classifier", ("models/llm_dpo", "data/dpo")),
])
def test_stage_with_an_uncached_hub_id_fails_fast(tmp_path, stage, params, source, param, outputs):
    """In-process, against the session's empty hub cache (see conftest `hf_caches`)."""
    ws = make_workspace(tmp_path / "ws", params)
    t0 = time.monotonic()
    r = run_in_process(ws, f"stages.{stage}")
    assert_fails_fast(r, time.monotonic() - t0, ws, source, param, outputs)


def test_a_local_path_that_does_not_exist_is_not_taken_for_a_hub_id(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"base_clip": {"source": "./data/models/my-clip"}})
    r = run_in_process(ws, "stages.base_clip")
    assert r.code == 2, r
    assert "./data/models/my-clip: model folder does not exist (set base_clip.source to a folder" in r.err
