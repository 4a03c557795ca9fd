"""Outside inputs: params.yaml's derived `inputs` section names each file a stage reads wherever it lives (the
path as written, absolute or relative), a README where the stage reads none; stages refuse a section that does not
match their params."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from safeclip.inputs import INPUTS, check_inputs, derive, stage_inputs
from safeclip.io import InputError
from safeclip.params import Params, load_params
from safeclip.profiles import compose, main

ROOT = Path(__file__).resolve().parents[2]


def leaves(section: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in section.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_the_world_reads_no_outside_file_so_every_input_is_its_folders_readme() -> None:
    flat = leaves(derive(Params()))
    assert flat["captions.captions.coco.annotations_train"] == "data/coco/README.md"
    assert flat["base_llm.base_llm.source"] == "data/models/README.md"  # `world`
    assert flat["eval_generation.eval_generation.i2p_csv"] == "data/i2p/README.md"  # unset
    assert flat["evaluate.evaluate.zeroshot.datasets"] == ["data/zeroshot/README.md"] * 8
    assert len(flat) == sum(len(v) for v in INPUTS.values())
    assert all(str(v).endswith("README.md") or isinstance(v, list) for v in flat.values())


def test_paths_are_hashed_where_they_are_and_hub_ids_are_not_files(tmp_path: Path) -> None:
    outside = tmp_path / "i2p.csv"
    paper = Params.model_validate({
        "captions": {"source": "coco", "coco": {"annotations_train": str(tmp_path / "coco/train.json")}},
        "base_llm": {"source": "meta-llama/Llama-2-7b-chat-hf"}, "base_sd": {"source": "/shared/sd-v1-4"},
        "base_clip": {"source": "open_clip:ViT-B-32/weights/oc.safetensors"},
        "eval_generation": {"i2p_csv": str(outside)}, "eval_attack": {"n_generate": 0},
        "judge": {"judges": ["q16"], "q16_prompts": "data/q16/p.safetensors", "q16_clip": "/shared/vit-l"}})
    inputs = derive(paper)
    assert inputs["captions"]["captions"]["coco"]["annotations_train"] == str(tmp_path / "coco/train.json")
    assert inputs["captions"]["captions"]["coco"]["images_val"] == "data/coco/val2017"  # the default place
    assert inputs["captions"]["captions"]["visu_hf"]["dataset"] == "data/visu_text/README.md"  # not read
    assert inputs["base_llm"]["base_llm"]["source"] == "data/models/README.md"  # a hub id
    assert inputs["base_sd"]["base_sd"]["source"] == "/shared/sd-v1-4"
    assert inputs["base_clip"]["base_clip"]["source"] == "weights/oc.safetensors"  # relative, like any path
    assert inputs["eval_generation"]["eval_generation"]["i2p_csv"] == str(outside)
    assert inputs["eval_generation"]["judge"] == {"q16_prompts": "data/q16/p.safetensors", "q16_clip": "/shared/vit-l"}
    assert inputs["judge"]["judge"]["q16_clip"] == "/shared/vit-l"
    # Q16 is read by visu only when visu judges with it, and by eval_attack only when it generates
    assert inputs["visu"]["judge"]["q16_prompts"] == "data/q16/README.md"
    assert inputs["eval_attack"]["judge"]["q16_prompts"] == "data/q16/README.md"
    home = Params.model_validate({"eval_generation": {"i2p_csv": "~/i2p/i2p.csv"}, "base_sd": {"source": "~/sd"},
                                  "base_llm": {"source": "meta-llama/Llama-2-7b-chat-hf"}})
    assert home.eval_generation.i2p_csv == str(Path.home() / "i2p/i2p.csv")  # what the reader opens, too
    assert derive(home)["eval_generation"]["eval_generation"]["i2p_csv"] == str(Path.home() / "i2p/i2p.csv")
    assert derive(home)["base_sd"]["base_sd"]["source"] == str(Path.home() / "sd")
    assert home.base_llm.source == "meta-llama/Llama-2-7b-chat-hf"
    tag = Params.model_validate({"base_clip": {"source": "open_clip:ViT-B-32/laion2b_s34b_b79k"}})
    assert derive(tag)["base_clip"]["base_clip"]["source"] == "data/models/README.md"


def test_zero_shot_sets_fill_their_slots_and_too_many_are_refused() -> None:
    sets = [{"name": f"s{i}", "path": f"/data/s{i}"} for i in range(9)]
    two = Params.model_validate({"evaluate": {"zeroshot": {"datasets": sets[:2]}}})
    assert derive(two)["evaluate"]["evaluate"]["zeroshot"]["datasets"] == ["/data/s0", "/data/s1"] + [
        "data/zeroshot/README.md"] * 6
    with pytest.raises(InputError, match=r"evaluate\.zeroshot\.datasets: 9 datasets; dvc\.yaml tracks at most 8"):
        derive(Params.model_validate({"evaluate": {"zeroshot": {"datasets": sets}}}))


def test_a_stage_refuses_an_inputs_section_that_its_params_do_not_derive(tmp_path: Path) -> None:
    """params.yaml edited by hand (the path changed, the section not): DVC would hash the old file."""
    csv = tmp_path / "i2p.csv"
    csv.write_text("prompt\n")
    stale = derive(Params())
    params = Params.model_validate({"eval_generation": {"i2p_csv": str(csv)}, "inputs": stale})
    with pytest.raises(InputError, match=r"inputs\.eval_generation\.eval_generation\.i2p_csv: 'data/i2p/README\.md'"
                                         r", but eval_generation\.i2p_csv derives '.*i2p\.csv'.*"
                                         r"python -m safeclip\.profiles --inputs"):
        check_inputs(params, "eval_generation@safe_clip")
    check_inputs(params, "base_clip")  # its own part of the section still matches
    fresh = Params.model_validate({"eval_generation": {"i2p_csv": str(csv)}, "inputs": derive(params)})
    check_inputs(fresh, "eval_generation@safe_clip")
    check_inputs(fresh, "ingest")  # a stage with no outside input


def test_profiles_inputs_rederives_a_hand_edited_params_yaml(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "params.yaml"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["base_sd"]["source"] = "/shared/sd-v1-4"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_params(path).inputs["base_sd"]["base_sd"]["source"] == "data/models/README.md"  # stale
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["safeclip.profiles", "--inputs"])
    main()  # python -m safeclip.profiles --inputs
    params = load_params(path)
    assert params.inputs["base_sd"]["base_sd"]["source"] == "/shared/sd-v1-4"
    assert params.base_sd.source == "/shared/sd-v1-4" and params.inputs == derive(params)


def test_a_missing_input_is_reported_at_composition_naming_the_param(tmp_path: Path, capsys) -> None:
    """Before any stage runs: DVC would stop at the missing dependency naming only its path."""
    gone = tmp_path / "gone.csv"
    compose(tmp_path / "params.yaml", [f"eval_generation.i2p_csv={gone}"], root=ROOT)
    err = capsys.readouterr().err
    assert f"warning: eval_generation.i2p_csv: {gone}: no such file or folder (read by eval_generation)" in err
    gone.write_text("prompt\n")
    compose(tmp_path / "params.yaml", [f"eval_generation.i2p_csv={gone}"], root=ROOT)
    assert "warning" not in capsys.readouterr().err


def test_composition_derives_the_section_through_the_hydra_plugin(tmp_path: Path) -> None:
    """`python -m safeclip.profiles` and `dvc exp run -S` compose through the same Hydra plugin path."""
    out = tmp_path / "params.yaml"
    csv = tmp_path / "shared/i2p.csv"
    compose(out, ["profile=paper", f"eval_generation.i2p_csv={csv}", "base_sd.source=/shared/sd"], root=ROOT)
    params = load_params(out)
    assert params.inputs == derive(params)
    assert params.inputs["eval_generation"]["eval_generation"]["i2p_csv"] == str(csv)
    assert params.inputs["base_sd"]["base_sd"]["source"] == "/shared/sd"
    assert params.inputs["base_llm"]["base_llm"]["source"] == "data/models/README.md"  # the paper's hub id
    world = tmp_path / "world.yaml"
    compose(world, [], root=ROOT)
    assert world.read_text() == (ROOT / "params.yaml").read_text()  # the committed world composition
    config = (ROOT / ".dvc/config").read_text()
    assert "plugins_path = conf" in config and (ROOT / "conf/hydra_plugins/safeclip_inputs.py").is_file()


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
