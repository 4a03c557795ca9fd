"""Params that point at files outside the folders their stages depend on are refused, naming param and folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safeclip.inputs import require_tracked, require_tracked_inputs, stage_inputs
from safeclip.io import InputError
from safeclip.params import Params


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/i2p").mkdir(parents=True)
    (tmp_path / "data/i2p/i2p.csv").write_text("prompt,categories\n")
    return tmp_path


def test_a_file_inside_its_folder_passes(workspace: Path) -> None:
    require_tracked("data/i2p/i2p.csv", "i2p", "eval_generation.i2p_csv")
    require_tracked(str(workspace / "data/i2p/i2p.csv"), "i2p", "eval_generation.i2p_csv")  # absolute is fine


def test_a_file_outside_its_folder_is_refused(workspace: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "i2p.csv"
    outside.write_text("prompt,categories\n")
    with pytest.raises(InputError, match=r"eval_generation\.i2p_csv: .*i2p\.csv: it is not inside data/i2p/.*"
                                         r"editing it would rerun nothing"):
        require_tracked(str(outside), "i2p", "eval_generation.i2p_csv")
    with pytest.raises(InputError, match="not inside data/i2p/"):
        require_tracked("data/coco/i2p.csv", "i2p", "eval_generation.i2p_csv")  # another kind's folder


def test_a_symlink_into_the_folder_is_refused(workspace: Path, tmp_path_factory) -> None:
    real = tmp_path_factory.mktemp("real")
    (real / "i2p.csv").write_text("prompt,categories\n")
    os.symlink(real, workspace / "data/i2p/linked")
    with pytest.raises(InputError, match="symbolic link"):
        require_tracked("data/i2p/linked/i2p.csv", "i2p", "eval_generation.i2p_csv")


def test_stage_inputs_follow_the_profile() -> None:
    world = Params()
    assert stage_inputs(world, "captions") == [] and stage_inputs(world, "eval_generation@none") == []
    paper = Params.model_validate({"captions": {"source": "coco"}, "base_llm": {"source": "meta-llama/x"},
                                   "eval_generation": {"i2p_csv": "data/i2p/i2p.csv"},
                                   "judge": {"judges": ["q16"], "q16_prompts": "data/q16/p.safetensors"}})
    assert [p for p, _, _ in stage_inputs(paper, "captions")] == [
        "captions.coco.annotations_train", "captions.coco.annotations_val", "captions.coco.images_train",
        "captions.coco.images_val"]
    assert {p for p, _, _ in stage_inputs(paper, "eval_generation@safe_clip")} == {
        "judge.q16_prompts", "judge.q16_clip", "eval_generation.i2p_csv"}
    assert stage_inputs(paper, "base_llm") == [("base_llm.source", "meta-llama/x", "models")]


def test_hub_ids_pass_and_local_model_paths_must_be_tracked(workspace: Path) -> None:
    ok = Params.model_validate({"base_llm": {"source": "meta-llama/Llama-2-7b-chat-hf"},
                                "base_clip": {"source": "open_clip:ViT-B-32/laion2b_s34b_b79k"}})
    require_tracked_inputs(ok, "base_llm")
    require_tracked_inputs(ok, "base_clip")
    (workspace / "llm").mkdir()
    bad = Params.model_validate({"base_llm": {"source": "./llm"}})
    with pytest.raises(InputError, match=r"base_llm\.source: \./llm: it is not inside data/models/"):
        require_tracked_inputs(bad, "base_llm")
    oc = Params.model_validate({"base_clip": {"source": "open_clip:ViT-B-32//tmp/w.safetensors"}})
    with pytest.raises(InputError, match=r"base_clip\.source: /tmp/w\.safetensors: it is not inside data/models/"):
        require_tracked_inputs(oc, "base_clip")


def test_a_relative_open_clip_weights_file_must_be_tracked_too(workspace: Path) -> None:
    """load_open_clip reads any pretrained part ending in .safetensors as a file, relative paths included
    (open_clip:ARCH/rel/w.safetensors): the same rule decides what must sit in data/models/."""
    rel = Params.model_validate({"base_clip": {"source": "open_clip:ViT-B-32/rel/w.safetensors"}})
    with pytest.raises(InputError, match=r"base_clip\.source: rel/w\.safetensors: it is not inside data/models/"):
        require_tracked_inputs(rel, "base_clip")
    inside = Params.model_validate({"base_clip": {"source": "open_clip:ViT-B-32/data/models/oc/w.safetensors"}})
    require_tracked_inputs(inside, "base_clip")
