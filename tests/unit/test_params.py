"""params.yaml validation (every bad key named) and the Hydra composition that writes it from conf/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from safeclip.params import Params, ParamsError, default_params_dict, load_params
from safeclip.profiles import compose
from safeclip.world.catalogue import POSITIONS

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def error(path: Path) -> str:
    with pytest.raises(ParamsError) as e:
        load_params(path)
    return str(e.value)


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path, "sft:\n  learning_rat: 0.1\n")
    msg = error(path)
    assert f"{path}:2: sft.learning_rat: unknown key (did you mean 'learning_rate'?)" in msg  # file:line: key


def test_unknown_nested_key(tmp_path):
    msg = error(write(tmp_path, "sft:\n  lora:\n    rr: 3\n"))
    assert ":3: sft.lora.rr: unknown key (did you mean 'r'?)" in msg


def test_errors_give_the_line_of_the_key_or_of_its_section(tmp_path):
    text = "base:\n  seed: 0\n\nsft:\n  epochs: 1\n  batch_size: 2.5\nmethods: [safe_clip, nope]\n"
    msg = error(write(tmp_path, text))
    assert ":6: sft.batch_size: Input should be a valid integer" in msg
    assert ":7: methods.1: " in msg  # a list item: its own line


def test_unknown_section(tmp_path):
    assert "bsae: unknown key (did you mean 'base'?)" in error(write(tmp_path, "bsae:\n  seed: 1\n"))
    msg = error(write(tmp_path, "zzz:\n  a: 1\n"))
    assert "zzz: unknown key (known: base, log, world, ingest, captions, base_llm, sft" in msg


@pytest.mark.parametrize(("text", "key", "line", "phrase"), [
    ("base:\n  seed: abc\n", "base.seed", 2, "valid integer"),
    ("sft:\n  batch_size: 2.5\n", "sft.batch_size", 2, "valid integer"),
    ("base:\n  device: tpu\n", "base.device", 2, "'cpu', 'cuda' or 'auto'"),
    ("world:\n  image_size: 48\n", "world.image_size", 2, "32 or 64"),
    ("sft:\n  lora:\n    target_modules: q_proj\n", "sft.lora.target_modules", 3, "valid list"),
    ("base: 3\n", "base", 1, "valid dictionary"),
    ("base:\n", "base", 1, "valid dictionary"),
])
def test_wrong_type(tmp_path, text, key, line, phrase):
    msg = error(write(tmp_path, text))
    assert f"params.yaml:{line}: {key}: " in msg
    assert phrase in msg


@pytest.mark.parametrize(("text", "expected"), [
    ("base:\n  scale: 2\n", "base.scale: Input should be less than or equal to 1 (got 2)"),
    ("base:\n  scale: 0\n", "base.scale: Input should be greater than 0 (got 0)"),
    ("sft:\n  learning_rate: -1\n", "sft.learning_rate: Input should be greater than 0 (got -1)"),
    ("ingest:\n  val_fraction: 1.0\n", "ingest.val_fraction: Input should be less than 1 (got 1.0)"),
    ("world:\n  max_objects: 3\n", "world.max_objects: Input should be less than or equal to 2 (got 3)"),
    ("base:\n  seed: -1\n", "base.seed: Input should be greater than or equal to 0 (got -1)"),
    ("captions:\n  coco:\n    max_images_per_split: 0\n", "captions.coco.max_images_per_split: Input should be"),
])
def test_out_of_range(tmp_path, text, expected):
    assert expected in error(write(tmp_path, text))


def test_every_problem_is_named_at_once(tmp_path):
    msg = error(write(tmp_path, "base:\n  sede: 1\n  scale: 0\nsft:\n  learning_rate: -1\n"))
    assert "base.sede: unknown key (did you mean 'seed'?)" in msg
    assert "base.scale:" in msg and "sft.learning_rate:" in msg


@pytest.mark.parametrize("text", ["- base\n- sft\n", "hello\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    assert error(path) == f"{path}: the top level must be a mapping of sections"


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "base: [1,\n")
    assert error(path).startswith(f"{path}: not valid YAML:")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert error(path) == f"{path}: file does not exist"


def test_invalid_utf8_is_a_params_error(tmp_path):
    """Stages only turn ParamsError/InputError into a clean message; a UnicodeDecodeError escapes as a traceback."""
    path = write(tmp_path, b"log:\n  level: \xff\n")
    assert str(path) in error(path)


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(write(tmp_path, "")) == Params()


def test_partial_file_overrides_only_what_it_names(tmp_path):
    p = load_params(write(tmp_path, "sft:\n  lora:\n    r: 8\n"))
    assert p.sft.lora.r == 8
    assert p.sft.lora.alpha == 32
    assert p.model_copy(update={"sft": Params().sft}) == Params()


def test_committed_params_equal_defaults():
    """Every value is the code's default; the `inputs` section is derived from them (safeclip/inputs.py)."""
    from safeclip.inputs import derive

    p = load_params(REPO / "params.yaml")
    assert p.model_copy(update={"inputs": None}) == Params() and p.inputs == derive(Params())
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    defaults = {**default_params_dict(), "inputs": derive(Params())}
    for section, values in raw.items():  # every value written in params.yaml is the default
        assert values == defaults[section], section


# --- composition (what `dvc exp run` does) ----------------------------------------------------------------------


def test_compose_world_default_is_the_committed_params(tmp_path):
    out = tmp_path / "p.yaml"
    compose(out, [], root=REPO)
    composed = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert composed == yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert load_params(out).model_copy(update={"inputs": None}) == Params()


def test_compose_paper_profile(tmp_path):
    out = tmp_path / "p.yaml"
    compose(out, ["profile=paper"], root=REPO)
    p = load_params(out)
    assert p.base.profile == "paper"
    assert p.base.device == "cuda"
    assert p.base_llm.source == "meta-llama/Llama-2-7b-chat-hf"
    assert p.captions.source == "coco"
    assert p.ingest.pairs_file.endswith("paper_pairs.jsonl")
    assert p.sft.finetune == "lora"
    assert p.sft.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # lists are replaced, not merged
    assert p.world == Params().world  # untouched sections keep the world defaults
    u = p.make_safe.uwm  # the paper's UWM, not the world's text-only, scaled negation
    assert (u.text_layers, u.vision_layers, u.tau, u.alpha, u.magnitude_prior_text) == (
        ["out_proj"], ["fc2"], 0.02, -1.0, True)


def test_compose_with_override(tmp_path):
    out = tmp_path / "p.yaml"
    compose(out, ["base.scale=0.1", "sft.epochs=2"], root=REPO)
    p = load_params(out)
    assert p.base.scale == 0.1 and p.sft.epochs == 2
    assert p.base.profile == "world"


def test_a_later_override_wins(tmp_path):
    """The e2e tests append per-test overrides to the CI list (`sft.epochs=20` ... `sft.epochs=2`)."""
    out = tmp_path / "p.yaml"
    compose(out, ["sft.epochs=20", "base.scale=0.1", "sft.epochs=2"], root=REPO)
    assert load_params(out).sft.epochs == 2


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_profiles_help_prints_the_usage_and_writes_nothing(tmp_path, flag):
    proc = subprocess.run([sys.executable, "-m", "safeclip.profiles", flag], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "python -m safeclip.profiles profile=paper" in proc.stdout, proc.stderr
    assert not (tmp_path / "params.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "safeclip.profiles", "--verbose"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode != 0 and "unknown option --verbose" in bad.stderr and "Traceback" not in bad.stderr


def test_paper_profile_names_a_dpo_scorer_on_the_hub(tmp_path):
    """dpo.scorer is `models` in the paper profile: without a classifier the dpo stage stopped at once."""
    out = tmp_path / "p.yaml"
    compose(out, ["profile=paper"], root=REPO)
    m = load_params(out).dpo.models
    assert load_params(out).dpo.scorer == "models"
    assert m.nsfw_classifier == "michellejieli/NSFW_text_classifier" and m.unsafe_label == "nsfw"
    assert m.similarity_model == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("name, processes", [("paper-1gpu", 1), ("paper-8gpu", 8)])
def test_example_override_files_compose_with_the_paper_profile(tmp_path, name, processes):
    """README "Run the paper setup": the override files are valid, and later overrides (sizes) win."""
    from safeclip.profiles import expand

    args = expand(["profile=paper", f"@{REPO}/examples/{name}.overrides", "base.scale=0.1"])
    assert not any(a.startswith("#") for a in args)
    out = tmp_path / "p.yaml"
    compose(out, args, root=REPO)
    p = load_params(out)
    assert p.base.num_processes == processes and p.base.mixed_precision == "bf16" and p.base.scale == 0.1
    assert p.captions.source == "coco" and p.eval_generation.i2p_csv == "data/i2p/i2p_benchmark.csv"


def test_q16_among_visu_judges_needs_the_evaluations_q16_prompts(tmp_path):
    msg = error(write(tmp_path, "visu:\n  images:\n    judges: [nudenet, q16]\n"))
    assert "visu.images.judges lists 'q16' but judge.q16_prompts is not set" in msg
    ok = load_params(write(tmp_path, "visu:\n  images:\n    judges: [q16]\njudge:\n"
                                     "  q16_prompts: data/q16/q16.safetensors\n"))
    assert ok.visu.images.judges == ["q16"]


def test_uwm_must_edit_at_least_one_tower(tmp_path):
    msg = error(write(tmp_path, "make_safe:\n  uwm:\n    text_layers: []\n    vision_layers: []\n"))
    assert "text_layers and vision_layers are both empty" in msg
    ok = load_params(write(tmp_path, "make_safe:\n  uwm:\n    text_layers: []\n    vision_layers: [fc2]\n"))
    assert ok.make_safe.uwm.text_layers == [] and ok.make_safe.uwm.vision_layers == ["fc2"]


def test_a_lone_object_may_have_a_glyph_wider_than_a_cell_but_two_objects_may_not(tmp_path):
    assert load_params(write(tmp_path, "world:\n  glyph_fraction: 0.45\n")).world.glyph_fraction == 0.45
    msg = error(write(tmp_path, "world:\n  glyph_fraction: 0.45\n  max_objects: 2\n"))
    assert "world.glyph_fraction 0.45 > 0.34 with world.max_objects 2: glyphs of two objects would overlap" in msg
    assert load_params(write(tmp_path, "world:\n  glyph_fraction: 0.34\n  max_objects: 2\n")).world.max_objects == 2
    assert "world.glyph_fraction" in error(write(tmp_path, "world:\n  glyph_fraction: 0.55\n"))


def test_world_positions_are_grid_cells_each_once_in_grid_order(tmp_path):
    assert load_params(write(tmp_path, "")).world.positions == ["left", "centre", "right"]  # the middle row
    grid = load_params(write(tmp_path, "world:\n  positions: [" + ", ".join(POSITIONS) + "]\n")).world.positions
    assert grid == list(POSITIONS)
    row = load_params(write(tmp_path, "world:\n  positions: [right, left, centre]\n")).world.positions
    assert row == ["left", "centre", "right"]  # grid order whatever the listing: equal sets draw alike
    assert "unknown position(s) ['middle']" in error(write(tmp_path, "world:\n  positions: [left, middle]\n"))
    assert "at most once" in error(write(tmp_path, "world:\n  positions: [left, left]\n"))
    assert "at least one" in error(write(tmp_path, "world:\n  positions: []\n"))
    msg = error(write(tmp_path, "world:\n  positions: [centre]\n  max_objects: 2\n  glyph_fraction: 0.3\n"))
    assert "world.max_objects 2 > 1 world.positions" in msg
