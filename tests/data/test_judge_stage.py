"""The judge stage outside the world: the off-the-shelf judges are loaded (a judge that cannot load fails here,
in seconds, not in eval_generation), and Q16 joins when judge.q16_prompts is set, as the README says. In the
world: the off-the-shelf judges are run once, here, on harmless renders, and left out of the evaluation panel."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from safeclip.clip.model import build_world_clip
from safeclip.eval.judges import build_panel
from safeclip.params import Judge
from tests.clip.conftest import TINY
from tests.robustness.util import make_workspace, run_in_process


def test_setting_q16_prompts_enables_q16():
    assert Judge(q16_prompts="data/q16/q16.safetensors").judges == ["world", "q16"]
    assert Judge(judges=["q16", "nudenet"], q16_prompts="data/q16/p.npy").judges == ["q16", "nudenet"]
    assert "q16" not in Judge().judges


def test_outside_the_world_every_judge_is_loaded(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"captions": {"source": "coco"},
                                          "judge": {"judges": ["nudenet", "opennsfw"],
                                                    "q16_prompts": "data/q16/q16.safetensors",
                                                    "q16_clip": "data/models/q16-clip"}})
    torch.manual_seed(0)
    build_world_clip(TINY, 32).save(ws / "data/models/q16-clip")
    (ws / "data/q16").mkdir(parents=True)
    save_file({"prompts": torch.randn(2, TINY.projection_dim)}, str(ws / "data/q16/q16.safetensors"))
    r = run_in_process(ws, "stages.judge")
    assert r.code == 0, r
    m = json.loads((ws / "metrics/judge.json").read_text())
    assert m == {"judge.nudenet.loaded": 1, "judge.opennsfw.loaded": 1, "judge.q16.loaded": 1}
    assert json.loads((ws / "models/judge/judges.json").read_text())["judges"] == ["nudenet", "opennsfw", "q16"]

    (ws / "data/q16/q16.safetensors").unlink()
    r = run_in_process(ws, "stages.judge")
    assert r.code == 2 and "judge.q16_prompts" in r.err and "Traceback" not in r.err, r


def test_in_the_world_the_off_the_shelf_judges_run_once_here_and_not_in_the_panel(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path / "ws", {"base": {"scale": 0.02, "num_threads": 1},
                                          "judge": {"world": {"epochs": 1, "channels": [8, 8, 8]}}})
    r = run_in_process(ws, "stages.judge")
    assert r.code == 0, r
    m = json.loads((ws / "metrics/judge.json").read_text())
    assert {"judge.nudenet.flags_safe_world", "judge.opennsfw.flags_safe_world"} <= set(m), m
    assert all(0 <= m[f"judge.{j}.flags_safe_world"] <= 100 for j in ("nudenet", "opennsfw"))
    # the panel eval_generation and eval_attack build from the same params: the world judge alone
    assert json.loads((ws / "models/judge/judges.json").read_text())["judges"] == ["world"]
    from safeclip.params import load_params

    monkeypatch.chdir(ws)  # the world judge loads from models/judge/world
    panel = build_panel(load_params("params.yaml").judge, "world")
    assert [j.name for j in panel] == ["world"]
