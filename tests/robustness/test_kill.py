"""Killed stages: SIGKILL mid-run (as soon as a checkpoint is on disk), rerun, and get exactly what an
uninterrupted run gives, having resumed from the checkpoint rather than from scratch. A checkpoint made under
other params is not resumed from: the stage says so and starts over."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.robustness.util import Forked, clone_workspace, files_equal, run_forked, write_params

SFT_OUT = ("models/llm_sft", "metrics/sft.json", "plots/sft.csv")
DPO_OUT = ("models/llm_dpo", "data/dpo", "metrics/dpo.json", "plots/dpo.csv")
VISU_OUT = ("data/visu", "metrics/visu.json")


def complete_hf_checkpoint(ws: Path, stage: str) -> bool:
    return any(ws.glob(f"checkpoints/{stage}/checkpoint-*/trainer_state.json"))


def logged_steps(log: str) -> list[int]:
    """Training steps the stage logged ("step N/M ..."), in order."""
    return [int(m) for m in re.findall(r" INFO step (\d+)/\d+ ", log)]


def assert_same_outputs(ref: Path, ws: Path, outputs: tuple[str, ...]) -> None:
    for rel in outputs:
        assert (ws / rel).exists(), rel
        assert files_equal(ref / rel, ws / rel) == [], f"{rel} differs from the uninterrupted run"


def hf_kill_and_resume(src: Path, tmp_path: Path, stage: str, outputs: tuple[str, ...], params: dict | None = None
                       ) -> tuple[Path, int, str]:
    """Run `stage` in a copy of `src`, SIGKILL it once a complete checkpoint exists, rerun it to the end.

    Returns the workspace, the step of the newest complete checkpoint at the kill, and the rerun's log.
    """
    ws = clone_workspace(src, tmp_path / "killed", drop=outputs)
    if params is not None:
        write_params(ws, params)
    Forked(ws, f"stages.{stage}", log=tmp_path / "killed.log").kill_when(lambda: complete_hf_checkpoint(ws, stage))
    for out in outputs:
        assert not (ws / out).exists(), f"a killed run left {out} behind"
    ckpts = [p for p in (ws / f"checkpoints/{stage}").glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    step = max(int(p.name.split("-")[1]) for p in ckpts)
    r = run_forked(ws, f"stages.{stage}", log=tmp_path / "resumed.log")
    assert r.code == 0, r
    return ws, step, r.err


def test_killed_sft_resumes_to_the_uninterrupted_outputs(world, tmp_path):
    ws, step, log = hf_kill_and_resume(world, tmp_path, "sft", SFT_OUT)
    assert f"resuming from checkpoints/sft/checkpoint-{step}" in log
    assert logged_steps(log) and min(logged_steps(log)) > step, "training restarted from scratch"
    assert_same_outputs(world, ws, SFT_OUT)


def test_killed_dpo_resumes_past_a_half_written_checkpoint(world, tmp_path):
    """Killed while writing checkpoint-N+1 (its trainer_state.json, written last, missing): resume from N."""
    ws = clone_workspace(world, tmp_path / "killed", drop=DPO_OUT)
    Forked(ws, "stages.dpo", log=tmp_path / "killed.log").kill_when(lambda: complete_hf_checkpoint(ws, "dpo"))
    assert not (ws / "models/llm_dpo").exists() and not (ws / "data/dpo").exists()
    ckpt_dir = ws / "checkpoints/dpo"
    step = max(int(p.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*")
               if (p / "trainer_state.json").exists())
    half = ckpt_dir / f"checkpoint-{step + 1}"
    shutil.copytree(ckpt_dir / f"checkpoint-{step}", half, dirs_exist_ok=True)
    (half / "trainer_state.json").unlink()
    r = run_forked(ws, "stages.dpo", log=tmp_path / "resumed.log")
    assert r.code == 0, r
    assert f"checkpoint-{step + 1} is incomplete" in r.err
    assert f"resuming from checkpoints/dpo/checkpoint-{step}" in r.err
    assert min(logged_steps(r.err)) > step, "training restarted from scratch"
    assert_same_outputs(world, ws, DPO_OUT)


def test_killed_visu_reuses_complete_shards_and_builds_the_same_data(world, tmp_path):
    ws = clone_workspace(world, tmp_path / "killed", drop=VISU_OUT)
    done = ws / "checkpoints/visu/shards/train-00002.parquet"
    Forked(ws, "stages.visu", log=tmp_path / "killed.log").kill_when(done.exists)
    assert not (ws / "data/visu").exists()
    r = run_forked(ws, "stages.visu", log=tmp_path / "resumed.log")
    assert r.code == 0, r
    reused = re.search(r"train: resumed, reusing (\d+) of 8 complete shards", r.err)
    assert reused and int(reused.group(1)) >= 3, r  # at least the shards on disk at the kill
    assert_same_outputs(world, ws, VISU_OUT)


@pytest.fixture(scope="module")
def make_safe_reference(clip_ws, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted make_safe runs of both trained methods, one workspace each."""
    out = {}
    for method in ("safe_clip", "safer_clip"):
        ws = clone_workspace(clip_ws, tmp_path_factory.mktemp(f"ref-{method}") / "ws")
        r = run_forked(ws, "stages.make_safe", "--method", method, log=ws / "run.log")
        assert r.code == 0, r
        out[method] = ws
    return out


@pytest.mark.parametrize("method", ["safe_clip", "safer_clip"])
def test_killed_make_safe_resumes_to_the_uninterrupted_model(clip_ws, make_safe_reference, tmp_path, method):
    outputs = (f"models/safe/{method}", f"metrics/make_safe/{method}.json", f"plots/make_safe/{method}.csv")
    ws = clone_workspace(clip_ws, tmp_path / "killed")
    progress = ws / f"checkpoints/make_safe/{method}/state/progress.json"
    Forked(ws, "stages.make_safe", "--method", method, log=tmp_path / "killed.log").kill_when(progress.exists)
    assert not (ws / outputs[0]).exists()
    r = run_forked(ws, "stages.make_safe", "--method", method, log=tmp_path / "resumed.log")
    assert r.code == 0, r
    resumed = re.search(r"resuming from the checkpoint at step (\d+)", r.err)
    assert resumed and 10 <= int(resumed.group(1)) < 40, r
    evals = [int(s) for s in re.findall(r" INFO step (\d+): loss", r.err)]
    assert evals and min(evals) > int(resumed.group(1)), "training restarted from scratch"
    assert_same_outputs(make_safe_reference[method], ws, outputs)


# --- a checkpoint made under other params is not resumed from -------------------------------------------------

def test_sft_checkpoint_under_other_params_is_not_resumed(world, tmp_path):
    ws = clone_workspace(world, tmp_path / "ws", drop=SFT_OUT)
    Forked(ws, "stages.sft", log=tmp_path / "killed.log").kill_when(lambda: complete_hf_checkpoint(ws, "sft"))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sft"]["learning_rate"] = 0.002
    write_params(ws, params)
    run = Forked(ws, "stages.sft", log=tmp_path / "rerun.log")
    # the first logged step tells whether it started over; no need to train to the end
    run.kill_when(lambda: bool(logged_steps(run.text())))
    log = run.text()
    assert "checkpoint in checkpoints/sft was made under different params or inputs: not resuming, starting " \
           "over" in log
    assert "resuming from" not in log
    assert logged_steps(log)[0] == 5, "the first logging step of a fresh run (logging_steps 5)"


def test_make_safe_checkpoint_under_other_params_is_not_resumed(clip_ws, tmp_path):
    ws = clone_workspace(clip_ws, tmp_path / "ws")
    progress = ws / "checkpoints/make_safe/safe_clip/state/progress.json"
    Forked(ws, "stages.make_safe", "--method", "safe_clip", log=tmp_path / "killed.log").kill_when(progress.exists)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["make_safe"]["safe_clip"]["learning_rate"] = 5e-3
    write_params(ws, params)
    r = run_forked(ws, "stages.make_safe", "--method", "safe_clip", log=tmp_path / "rerun.log")
    assert r.code == 0, r
    assert "checkpoint in checkpoints/make_safe/safe_clip was made under different params or inputs: not " \
           "resuming, starting over" in r.err
    assert "resuming from the checkpoint" not in r.err
    assert [int(s) for s in re.findall(r" INFO step (\d+): loss", r.err)] == [10, 20, 30, 40]


def test_visu_shards_of_another_model_are_not_reused(world, tmp_path):
    """The DPO model changed since the shards were made: they would mix two models' rewrites."""
    ws = clone_workspace(world, tmp_path / "ws", drop=VISU_OUT)
    done = ws / "checkpoints/visu/shards/train-00001.parquet"
    Forked(ws, "stages.visu", log=tmp_path / "killed.log").kill_when(done.exists)
    shutil.rmtree(ws / "models/llm_dpo")
    shutil.copytree(world / "models/llm_sft", ws / "models/llm_dpo")
    r = run_forked(ws, "stages.visu", log=tmp_path / "rerun.log")
    assert r.code == 0, r
    assert "checkpoint in checkpoints/visu was made under different params or inputs: not resuming, starting " \
           "over" in r.err
    assert "reusing" not in r.err


def test_only_complete_trainer_checkpoints_are_resumed_from(tmp_path, caplog):
    """A kill mid-save leaves checkpoint-N without trainer_state.json (written last) or with a cut one."""
    import logging

    from safeclip.checkpoint import drop_incomplete_checkpoints, last_checkpoint

    for step, state in ((5, '{"global_step": 5}'), (10, '{"global_step": 10}'), (15, '{"global_st'), (20, None),
                        (100, None)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-7.tmp").mkdir()  # not a checkpoint name
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    with caplog.at_level(logging.WARNING):
        drop_incomplete_checkpoints(tmp_path, logging.getLogger("test"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5", "checkpoint-7.tmp"]
    assert "checkpoint-15 is incomplete" in caplog.text and "checkpoint-100 is incomplete" in caplog.text
    assert last_checkpoint(tmp_path / "nowhere") is None
