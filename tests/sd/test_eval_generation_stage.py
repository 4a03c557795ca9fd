"""eval_generation through its stage script on tiny models in a temp workspace: outputs, a SIGKILL mid-run
resumed to the same images, and a checkpoint made under other params not resumed from."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from safeclip.clip.model import text_encoder
from safeclip.data.schemas import VISU
from safeclip.eval import world_judge as wj
from safeclip.io import read_parquet, write_parquet
from safeclip.params import WorldJudgeTrain
from safeclip.sd import models as sd_models
from safeclip.sd.pipeline import assemble
from safeclip.world.catalogue import OBJECTS, POSITIONS
from safeclip.world.render import RenderConfig
from safeclip.world.scene import enumerate_scenes
from tests.clip.conftest import visu_rows
from tests.robustness.util import Forked
from tests.sd.test_sd import SD, UNET, VAE, clip

PARAMS = {"eval_generation": {"n_unsafe_prompts": 6, "n_safe_prompts": 6, "num_inference_steps": 8,
                              "batch_size": 2, "grid_prompts": 3},
          "judge": {"judges": ["world"]}, "evaluate": {"batch_size": 16}, "base": {"num_threads": 1}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("gen")
    write_parquet(ws / "data/visu/test.parquet", visu_rows(8, "test", 2), VISU)
    bundle = clip(16)
    bundle.save(ws / "models/base_clip")
    torch.manual_seed(1)
    vae = sd_models.build_vae(VAE, 32)
    unet = sd_models.build_unet(UNET, sd_models.latent_size(VAE, 32), VAE.latent_channels, 16)
    assemble(vae, unet, text_encoder(bundle.model), bundle.tokenizer,
             sd_models.sample_scheduler(sd_models.train_scheduler(SD))).save_pretrained(ws / "models/base_sd")
    scenes = enumerate_scenes(tuple(OBJECTS), tuple(POSITIONS))[::40]
    x, y = wj.render_judge_set(scenes, 1, RenderConfig(), 0)
    net, _ = wj.train_world_judge(x, y, WorldJudgeTrain(epochs=1, channels=[8, 8, 8]), 0)
    wj.save_world_judge(net, ws / "models/judge/world")
    (ws / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return ws


def stage(ws: Path, params: dict | None = None) -> Forked:
    """The stage as `python -m stages.eval_generation --model none`, in a forked child of this process (a real
    process, SIGKILL-able, without a fresh interpreter's ~5 s of imports)."""
    if params is not None:
        (ws / "params.yaml").write_text(yaml.safe_dump(params))
    logs = ws.parent / f"{ws.name}-logs"
    logs.mkdir(exist_ok=True)
    return Forked(ws, "stages.eval_generation", "--model", "none", log=logs / f"run-{len(list(logs.iterdir()))}.log")


def finish(proc: Forked) -> str:
    result = proc.wait()
    assert result.code == 0, result
    return result.err


def images(ws: Path) -> list[dict]:
    from stages.eval_generation import IMAGES

    return read_parquet(ws / "data/generation/none/images.parquet", IMAGES).to_pylist()


def test_outputs_then_kill_and_resume(workspace: Path):
    ws = workspace
    finish(stage(ws, PARAMS))
    full = images(ws)
    assert len(full) == 12 and {r["kind"] for r in full} == {"unsafe", "safe"}
    assert (ws / "data/generation/none/grid.png").is_file()
    m = yaml.safe_load((ws / "metrics/generation/none.json").read_text())
    assert m["gen.unsafe.images"] == 6 and 0 <= m["gen.unsafe.inappropriate"] <= 100
    assert "gen.unsafe.drew.object" in m and "gen.unsafe.concept_mean" in m

    # Killed after the second of six prompt batches: the rerun generates only the rest, to the same images.
    for d in ("data/generation", "checkpoints", "metrics"):
        subprocess.run(["rm", "-rf", str(ws / d)], check=True)
    shard = ws / "checkpoints/eval_generation/none/shards/shard-00001.parquet"
    stage(ws).kill_when(shard.exists, timeout=240)
    assert not (ws / "data/generation/none").exists() and not (ws / "metrics/generation/none.json").exists()
    done = len(list(shard.parent.glob("shard-*.parquet")))
    assert 2 <= done < 6
    err = finish(stage(ws))
    assert f"resuming: {done} of 6 prompt batches already generated" in err
    again = images(ws)
    assert [r["png"] for r in again] == [r["png"] for r in full]
    assert [r["prompt_id"] for r in again] == [r["prompt_id"] for r in full]

    # Other params: the old shards are not reused.
    other = {**PARAMS, "eval_generation": {**PARAMS["eval_generation"], "guidance_scale": 3.0}}
    err = finish(stage(ws, other))
    assert "made under different params or inputs: not resuming, starting over" in err
    assert "resuming:" not in err
    changed = images(ws)
    assert any(a["png"] != b["png"] for a, b in zip(changed, full, strict=True))
    np.testing.assert_equal(len(changed), 12)


def test_a_broken_i2p_csv_stops_the_stage_with_nothing_written(workspace: Path):
    """One broken file through the stage (exit 2, the file and line named, nothing written); every kind of breakage
    read_i2p names is checked in tests/eval/test_generation_metrics.py, without a process start each."""
    ws = workspace
    csv, needle = "prompt,categories\na calm lake,shocking\n,hate\n", "line 3: field 'prompt' is empty"
    for d in ("data/generation", "checkpoints", "metrics"):
        subprocess.run(["rm", "-rf", str(ws / d)], check=True)
    (ws / "data/i2p").mkdir(parents=True, exist_ok=True)
    (ws / "data/i2p/i2p.csv").write_text(csv)
    bad = {**PARAMS, "eval_generation": {**PARAMS["eval_generation"], "i2p_csv": "data/i2p/i2p.csv"}}
    result = stage(ws, bad).wait()
    err = result.err
    assert result.code == 2, result
    assert "i2p.csv" in err and needle in err
    assert not (ws / "data/generation").exists() and not (ws / "metrics").exists()
    (ws / "params.yaml").write_text(yaml.safe_dump(PARAMS))


def test_a_judge_that_cannot_load_fails_before_any_image_is_generated(workspace: Path):
    ws = workspace
    for d in ("data/generation", "checkpoints", "metrics"):
        subprocess.run(["rm", "-rf", str(ws / d)], check=True)
    bad = {**PARAMS, "judge": {"judges": ["world", "q16"], "q16_prompts": "data/q16/missing.safetensors"}}
    result = stage(ws, bad).wait()
    err = result.err
    assert result.code == 2, result
    assert "missing.safetensors" in err and "judge.q16_prompts" in err
    assert not list(ws.glob("checkpoints/eval_generation/none/shards/*.parquet")), "images were generated first"
    assert not (ws / "data/generation").exists() and not (ws / "metrics").exists()
    (ws / "params.yaml").write_text(yaml.safe_dump(PARAMS))


def test_a_text_tower_narrower_than_the_unet_skips_with_a_marker(workspace: Path, tmp_path: Path):
    """e.g. open_clip:ViT-B-32 (512) with SD v1.4 (768): skipped, so the rest of the DAG can finish."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, ignore=shutil.ignore_patterns("checkpoints", "metrics", "generation"))
    shutil.rmtree(ws / "models/base_clip")
    clip(24).save(ws / "models/base_clip")
    err = finish(stage(ws, PARAMS))
    assert "text-to-image evaluation skipped" in err and "24" in err and "16" in err
    marker = ws / "data/generation/none/SKIPPED"
    assert "24" in marker.read_text() and "cross-attention width 16" in marker.read_text()
    assert not (ws / "data/generation/none/images.parquet").exists()
    assert yaml.safe_load((ws / "metrics/generation/none.json").read_text()) == {"gen.skipped": 1}
