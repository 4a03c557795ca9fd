"""make_safe@safer_clip and make_safe@uwm through their stage scripts, on a tiny CLIP in a temp workspace:
the targets stage, the curriculum through training and resume, UWM's edit limited to the chosen weights."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from safeclip.checkpoint import fingerprint
from safeclip.clip.model import build_world_clip, load_clip
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.data.schemas import SAFER_TARGETS
from safeclip.io import InputError, read_parquet
from safeclip.methods.quadruples import load_quadruples
from safeclip.methods.safer_clip import (
    CurriculumPlan,
    SaferClipObjective,
    attach_targets,
    easy_first_order,
    redirection_targets,
)
from safeclip.methods.trainer import Schedule, finetune
from safeclip.params import Base, ClipLora, SaferClipWeights, Uwm
from tests.clip.conftest import TINY, counting, killed_at

LOG = logging.getLogger("test")
PARAMS = {
    "make_safe": {
        "safer_clip": {"lora": {"r": 4, "alpha": 4.0}, "learning_rate": 1e-2, "batch_size": 8, "epochs": 3,
                       "eval_every": 4, "curriculum": [0.5]},
        "uwm": {"calibration_pairs": 24, "batch_size": 8, "tau": 0.1},
    },
    "evaluate": {"batch_size": 16},
}


@pytest.fixture
def workspace(tmp_path, monkeypatch, visu_dir, tiny_bundle):
    (tmp_path / "data").mkdir()
    shutil.copytree(visu_dir, tmp_path / "data/visu")
    tiny_bundle.save(tmp_path / "models/base_clip")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_stage(monkeypatch, module: str, *args: str) -> None:
    import importlib

    monkeypatch.setattr(sys, "argv", [module, *args])
    importlib.import_module(module).main()


def metrics(path) -> dict:
    return json.loads(open(path).read())


def test_safer_targets_then_safer_clip_trains_and_exports(workspace, monkeypatch):
    run_stage(monkeypatch, "stages.safer_targets")
    for split, n in (("train", 32), ("val", 16)):
        rows = read_parquet(f"data/safer_clip/{split}.parquet", SAFER_TARGETS).to_pylist()
        assert len(rows) == n
        assert all(r["target_similarity"] >= r["partner_similarity"] - 1e-6 for r in rows), \
            "the nearest safe caption is at least as close as the row's own partner"
    assert metrics("metrics/safer_targets.json")["safer_targets.train.quadruples"] == 32

    run_stage(monkeypatch, "stages.make_safe", "--method", "safer_clip")
    m = metrics("metrics/make_safe/safer_clip.json")
    # 32 pairs, batch 8: epoch 1 on the easiest half (2 steps), then 2 epochs of 4 steps
    assert m["make_safe.safer_clip.steps"] == 2 + 4 + 4
    assert {f"make_safe.safer_clip.final.{t}" for t in SaferClipWeights.model_fields} <= set(m)
    assert "val_loss" in open("plots/make_safe/safer_clip.csv").readline()
    base, safe = load_clip("models/base_clip").model, load_clip("models/safe/safer_clip").model
    changed = {k for k, v in safe.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert any(k.startswith("text_model.") for k in changed) and any(k.startswith("vision_model.") for k in changed)
    assert not any("lora" in k for k in safe.state_dict()), "LoRA is merged into a plain CLIPModel"


def test_safer_clip_refuses_stale_targets(workspace, monkeypatch, capsys):
    run_stage(monkeypatch, "stages.safer_targets")
    from safeclip.data.schemas import SAFER_TARGETS as schema
    from safeclip.io import write_parquet

    rows = read_parquet("data/safer_clip/train.parquet", schema).to_pylist()[1:]  # one quadruple lost
    write_parquet("data/safer_clip/train.parquet", rows, schema)
    with pytest.raises(SystemExit) as e:
        run_stage(monkeypatch, "stages.make_safe", "--method", "safer_clip")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "data/safer_clip/train.parquet" in err and "train-0" in err and "safer_targets" in err


def test_uwm_negates_only_the_selected_weights_of_the_chosen_layers(workspace, monkeypatch, capsys):
    assert Uwm().text_layers == ["out_proj"] and Uwm().vision_layers == []  # what the asserts rely on
    run_stage(monkeypatch, "stages.make_safe", "--method", "uwm")
    base = load_clip("models/base_clip").model.state_dict()
    safe = load_clip("models/safe/uwm").model.state_dict()
    m = metrics("metrics/make_safe/uwm.json")
    total = 0
    for k, v in safe.items():
        diff = ~torch.isclose(v, base[k], rtol=0, atol=0)
        if not diff.any():
            continue
        layers = Uwm().text_layers if k.startswith("text_model.") else Uwm().vision_layers
        assert k.endswith(tuple(f".{name}.weight" for name in layers)), f"{k} changed"
        assert torch.equal(v[diff], Uwm().alpha * base[k][diff]), f"{k}: changed weights are exactly x alpha"
        total += int(diff.sum())
    negated = m["make_safe.uwm.mask.text.negated"] + m["make_safe.uwm.mask.vision.negated"]
    assert 0 < total == negated  # (a weight exactly 0 would not show as changed; none is in a trained model)
    per_layer = {k: v for k, v in m.items() if k.endswith(".negated") and ".encoder." in k}
    assert len(per_layer) == TINY.num_layers and sum(per_layer.values()) == negated  # the text tower's
    assert m["make_safe.uwm.mask.vision.negated"] == 0 and m["make_safe.uwm.mask.vision.percent"] == 0
    assert m["make_safe.uwm.calibration_pairs"] == 24

    first = load_clip("models/safe/uwm").model.state_dict()
    capsys.readouterr()
    run_stage(monkeypatch, "stages.make_safe", "--method", "uwm")
    assert "reusing the calibration scores" in capsys.readouterr().err
    again = load_clip("models/safe/uwm").model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first), "deterministic, from cached scores"

    params = dict(PARAMS, make_safe=dict(PARAMS["make_safe"], uwm=dict(PARAMS["make_safe"]["uwm"], tau=0.3)))
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(monkeypatch, "stages.make_safe", "--method", "uwm")
    assert "reusing the calibration scores" in capsys.readouterr().err, "a tau sweep does not recalibrate"
    bigger = metrics("metrics/make_safe/uwm.json")
    assert bigger["make_safe.uwm.mask.text.negated"] + bigger["make_safe.uwm.mask.vision.negated"] > negated


def _safer_run(visu_dir, ckpt, objective=None, steps=7):
    torch.manual_seed(0)
    bundle = build_world_clip(TINY, 32)
    train, _ = load_quadruples(str(visu_dir / "train.parquet"), bundle)
    val, _ = load_quadruples(str(visu_dir / "val.parquet"), bundle)
    enc = {}

    def encode(texts):  # a stand-in text tower: deterministic vectors per caption
        return torch.stack([enc.setdefault(t, torch.randn(8, generator=torch.Generator().manual_seed(len(enc))))
                            for t in texts])
    sims = {}
    for q in (train, val):
        rows = redirection_targets(q.ids, q.safe_text, q.unsafe_text, encode)
        sims[q.where] = attach_targets(q, rows, "targets")
    plan = CurriculumPlan(easy_first_order(sims[train.where]), [0.5], 8, 0)
    acc = make_accelerator(Base())
    state = TrainState(acc, ckpt, fingerprint("safer-test", steps), LOG)
    schedule = Schedule(learning_rate=1e-2, batch_size=8, steps=steps, eval_every=3, patience=10, keep="last")
    objective = objective or SaferClipObjective(SaferClipWeights(), 100.0, 1.0)
    torch.manual_seed(0)
    return finetune(bundle, objective, train, val, ClipLora(r=4, alpha=4.0), schedule, "frozen", 0, acc, state,
                    ckpt, LOG, "safer", sampler=plan), plan


def test_killed_safer_clip_resumes_mid_curriculum_to_the_same_weights(visu_dir, tmp_path):
    full, plan = _safer_run(visu_dir, tmp_path / "a")
    assert plan.phase_steps == [2] and full.steps == 7
    inner = SaferClipObjective(SaferClipWeights(), 100.0, 1.0)
    with pytest.raises(KeyboardInterrupt):
        _safer_run(visu_dir, tmp_path / "b", killed_at(5, inner))
    count = counting(inner)
    resumed, _ = _safer_run(visu_dir, tmp_path / "b", count)
    assert count.trained == 4, "resumed from the step-3 checkpoint: steps 4-7 train"
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_safer_batches_carry_their_targets(visu_dir, tiny_bundle):
    q, _ = load_quadruples(str(visu_dir / "train.parquet"), tiny_bundle)
    rows = [{"id": i, "target_id": q.ids[(n + 1) % len(q)], "target_similarity": 0.5} for n, i in enumerate(q.ids)]
    attach_targets(q, rows, "t.parquet")
    b = q.batch([0, 3])
    assert torch.equal(b["target_input_ids"], q.tokens_safe["input_ids"][[1, 4]])
    assert torch.equal(b["target_pixels"], q.pixels([1, 4])[0])
    with pytest.raises(InputError, match=r"t.parquet: row 0 .*'target_id'"):
        attach_targets(q, [dict(rows[0], target_id="nope")] + rows[1:], "t.parquet")
    assert np.array_equal(q.targets, (np.arange(len(q)) + 1) % len(q))


def test_compute_device_follows_base_device():
    from safeclip.runtime import compute_device

    assert compute_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert compute_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="base.device is 'cuda' but torch sees no GPU"):
            compute_device("cuda")
    else:
        assert compute_device("auto") == compute_device("cuda") == "cuda"
