"""dvc.yaml lists exactly what each stage reads: its import closure inside the repo (not a file more, so an edit
reruns only the stages that import it), the outside inputs its params point at (templated from params.yaml's
derived `inputs` section), and the whole `base` section."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from safeclip.closure import ROOT, closure, imported_modules, stage_commands, stage_modules
from safeclip.inputs import FOLDERS, INPUTS, ZEROSHOT_SLOTS, stage_key

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


def test_every_outside_input_param_is_a_templated_dep_of_each_stage_that_may_read_it() -> None:
    """dvc.yaml lists ${inputs.<stage>.<param>} for exactly the params INPUTS declares for the stage (the zero-shot
    list in ZEROSHOT_SLOTS entries), and no fixed input folder any more."""
    for stage, spec in SPEC.items():
        key = stage_key(stage)
        templated = sorted(d for d in spec.get("deps", []) if d.startswith("${inputs."))
        want = sorted(f"${{inputs.{key}.{p}[{i}]}}" if p == "evaluate.zeroshot.datasets" else f"${{inputs.{key}.{p}}}"
                      for p, _ in INPUTS.get(key, []) for i in range(ZEROSHOT_SLOTS if "zeroshot" in p else 1))
        assert templated == want, f"{stage}: dvc.yaml's templated inputs {templated}, INPUTS declares {want}"
        assert not set(spec.get("deps", [])) & set(FOLDERS.values()), f"{stage}: a fixed input folder is a dep"
    for folder in FOLDERS.values():
        assert (ROOT / folder / "README.md").is_file(), folder  # the placeholder: exists in every profile


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
def test_each_stage_hashes_every_outside_input_it_reads_and_only_those(source: str) -> None:
    """Per stage, not per pipeline: an input some other stage reads is a placeholder here, so it does not rerun
    this one (Q16 is read by the evaluation's judge and generation stages, and by visu only when it judges)."""
    from safeclip.inputs import derive, local_path, placeholder, stage_inputs

    params = _every_input_on(source)
    inputs = derive(params)
    for stage in SPEC:
        key = stage_key(stage)
        read = {p: local_path(v, k) for p, v, k in stage_inputs(params, stage)}
        declared = {p for p, _ in INPUTS.get(key, [])}
        assert {p.split("[")[0] for p in read} <= declared, f"{stage} reads {sorted(read)}; INPUTS has {declared}"
        for param, kind in INPUTS.get(key, []):
            node = inputs[key]
            for part in param.split("."):
                node = node[part]
            if param == "evaluate.zeroshot.datasets":
                got = [n for n in node if n != placeholder(kind)]
                assert got == [v for p, v in read.items() if p.startswith(param)], stage
            else:
                assert node == (read.get(param) or placeholder(kind)), (stage, param, node)
    assert inputs["eval_generation"]["eval_generation"]["i2p_csv"] == "data/i2p/i2p_benchmark.csv"
    assert inputs["judge"]["judge"]["q16_prompts"] == "data/q16/prompts.safetensors"
    assert inputs["dpo"]["dpo"]["models"]["nsfw_classifier"] == "data/models/cls"


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


def test_the_committed_lock_is_what_the_committed_code_params_and_inputs_hash(tmp_path: Path) -> None:
    """In a copy of the repo with no outputs (a fresh clone before `make repro`), `dvc status` reports only the
    outputs as missing: no stage's command, code, params or outside inputs (the world's README placeholders)
    differ from what dvc.lock recorded, so the lock and the metrics beside it come from this code."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.e2e.test_pipeline import copy_repo

    copy_repo(tmp_path)
    shutil.copy2(ROOT / "dvc.lock", tmp_path / "dvc.lock")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    for cmd in (["git", "init", "-q"], ["dvc", "status", "--json"]):
        out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    status = json.loads(out)
    assert status, "no outputs and yet nothing to reproduce"
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    produced = {o["path"] for s in lock.values() for o in s.get("outs", [])}
    for stage, entries in status.items():
        for e in entries:
            assert isinstance(e, dict) and set(e) <= {"changed outs", "changed deps"}, (
                f"{stage}: {entries} (refresh dvc.lock from the committed code)")
            missing = {"deleted", "not in cache"}
            assert set(e.get("changed outs", {}).values()) <= missing, (stage, e)
            # upstream outputs (or folders of them) are missing too, and only those: code, params and outside
            # inputs hash as locked
            deps = e.get("changed deps", {})
            upstream = {d for d in deps if any(d == o or d.startswith(f"{o}/") or o.startswith(f"{d}/")
                                               for o in produced)}
            assert set(deps) == upstream, (
                f"{stage}: {deps} (refresh dvc.lock from the committed code)")


def test_a_new_hub_revision_reruns_the_stage_that_resolves_it() -> None:
    """A hub id is not a file DVC can hash: its `revision` param is what reruns the stage when the user moves to
    another snapshot, so each stage reading a source with a revision depends on that param (or its section)."""
    from safeclip.params import Params

    fields = Params.model_fields
    found = []
    for key, declared in INPUTS.items():
        for param, _ in declared:
            section, *_, leaf = param.split(".")
            parent = param.rsplit(".", 1)[0]
            model = fields[section].annotation
            for part in parent.split(".")[1:]:
                model = model.model_fields[part].annotation
            if "revision" not in model.model_fields:
                continue
            revision = f"{parent}.revision"
            for stage in (s for s in SPEC if stage_key(s) == key):
                listed = [str(p) for p in SPEC[stage].get("params", [])]
                assert any(revision == p or revision.startswith(p + ".") for p in listed), (stage, revision)
                found.append(revision)
    assert set(found) == {"captions.visu_hf.revision", "base_llm.revision", "base_clip.revision",
                          "base_sd.revision"}, found
