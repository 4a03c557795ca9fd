"""dvc.yaml lists exactly what each stage reads: its import closure inside the repo (not a file more, so an edit
reruns only the stages that import it), the folders of the outside inputs its params point at, and the whole
`base` section."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from safeclip.closure import ROOT, closure, imported_modules, stage_commands, stage_modules
from safeclip.inputs import FOLDERS

SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
CODE = ("safeclip/", "stages/")


def _covered(dep: str) -> set[Path]:
    p = ROOT / dep
    return set(p.rglob("*.py")) if p.is_dir() else {p}


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_deps_are_the_import_closure(stage: str) -> None:
    cmd = SPEC[stage]["cmd"].replace("${item.method}", "x")
    needed = closure(stage_modules(cmd))
    listed = [d for d in SPEC[stage]["deps"] if d.startswith(CODE)]
    covered = set().union(*(_covered(d) for d in listed))
    missing = sorted(str(p.relative_to(ROOT)) for p in needed - covered)
    assert not missing, f"{stage}: dvc.yaml misses {missing} (python -m safeclip.closure prints the closure)"
    extra = sorted(d for d in listed if not _covered(d) <= needed)
    assert not extra, f"{stage}: dvc.yaml lists {extra}, which its code never imports (reruns for nothing)"


@pytest.mark.parametrize("stage", sorted(SPEC))
def test_every_stage_depends_on_the_whole_base_section_and_not_on_log(stage: str) -> None:
    params = SPEC[stage].get("params", [])
    if stage == "report":  # reads metrics files only; it names base.profile for its headings
        assert "base.profile" in params
        return
    assert "base" in params, f"{stage}: depends on a part of `base`; every key of it can change a result"
    assert not any(str(p).startswith("log") for p in params), stage


def test_outside_input_folders_exist_and_are_stage_deps() -> None:
    deps = {d for s in SPEC.values() for d in s.get("deps", [])}
    for kind, folder in FOLDERS.items():
        assert (ROOT / folder / "README.md").is_file(), folder  # exists in every profile: DVC needs it
        assert folder in deps, f"{kind}: no stage depends on {folder}"


def _every_input_on(source: str):
    """params.yaml with every optional outside input switched on, captions from `source`."""
    from safeclip.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["captions"]["source"] = source
    raw["captions"]["visu_hf"]["coco_images"] = "data/coco/train2017"
    raw["dpo"]["scorer"] = "models"
    raw["dpo"]["models"].update(nsfw_classifier="data/models/cls", similarity_model="data/models/enc")
    raw["judge"].update(judges=["q16"], q16_prompts="data/q16/prompts.safetensors")
    raw["visu"]["images"]["judges"] = ["nudenet", "q16"]
    raw["evaluate"]["zeroshot"]["datasets"] = [{"name": "pets", "path": "data/zeroshot/pets"}]
    raw["eval_generation"]["i2p_csv"] = "data/i2p/i2p_benchmark.csv"
    raw["eval_attack"]["n_generate"] = 4
    return Params.model_validate(raw)


@pytest.mark.parametrize("source", ["coco", "visu-hf"])
def test_each_stage_depends_on_the_folder_of_every_outside_input_it_reads(source: str) -> None:
    """Per stage, not per pipeline: a folder that some other stage lists does not rerun this one."""
    from safeclip.inputs import stage_inputs

    params = _every_input_on(source)
    read = {stage: {kind for _, _, kind in stage_inputs(params, stage)} for stage in SPEC}
    assert read["eval_attack"] == read["judge"] == {"q16", "models"} and "i2p" in read["eval_generation_base"]
    assert read["visu"] == {"q16", "models"}
    for stage, kinds in read.items():
        missing = sorted(FOLDERS[k] for k in kinds if FOLDERS[k] not in SPEC[stage]["deps"])
        assert not missing, f"{stage} reads {missing} under {source} captions, but dvc.yaml does not list them"


def test_closure_follows_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "safeclip"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    files = {
        "safeclip/__init__.py": "",
        "safeclip/a.py": "from safeclip import sub\nfrom . import b\n",
        "safeclip/b.py": "def f():\n    from safeclip.sub.c import g  # lazy\n    return g\n",
        "safeclip/unused.py": "import safeclip.a\n",
        "safeclip/sub/__init__.py": "import os\n",
        "safeclip/sub/c.py": "from ..d import x\n",
        "safeclip/d.py": "x = 1\n",
        "stages/__init__.py": "",
        "stages/s.py": "import numpy\nfrom safeclip.a import *\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    got = {str(p.relative_to(tmp_path)) for p in closure(["stages.s"], tmp_path)}
    assert got == set(files) - {"safeclip/unused.py"}
    assert "safeclip.d" in imported_modules(tmp_path / "safeclip/sub/c.py", tmp_path)


def test_stage_modules_reads_the_launcher() -> None:
    assert stage_modules("python -m safeclip.launch stages.sft --x 1") == ["safeclip.launch", "stages.sft"]
    assert stage_modules("python -m stages.evaluate --model none") == ["stages.evaluate"]
    assert set(stage_commands()) == set(SPEC)
