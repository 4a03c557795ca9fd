"""Untrusted files: weights load from safetensors only. A pickle planted where a user points a stage at weights
is refused by name and never unpickled (unpickling it would create a marker file); no remote code is ever run."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from safeclip.clip.model import build_world_clip
from safeclip.llm.model import build_world_llm, save_model_dir, tokenizer_corpus
from safeclip.params import WorldLlm
from safeclip.world.tokenizer import train_word_tokenizer
from tests.clip.conftest import TINY
from tests.robustness.util import ROOT, leftovers, make_workspace, run_in_process


class Planted:
    """Unpickling this creates `marker`: proof that the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(folder: Path, name: str, marker: Path) -> None:
    """A model folder whose only weights are a code-running pickle named `name` (the rest is a real model's)."""
    payload = pickle.dumps({"weight": Planted(marker)})
    pickle.loads(payload)["weight"].close()  # the payload really does create the marker...
    assert marker.exists()
    marker.unlink()
    for p in folder.glob("*.safetensors"):
        p.unlink()
    (folder / name).write_bytes(payload)


def tiny_clip_folder(path: Path) -> Path:
    torch.manual_seed(0)
    build_world_clip(TINY, 32).save(path)
    return path


def assert_refused_pickle(r, ws: Path, folder: Path, name: str, marker: Path, outputs: tuple[str, ...]) -> None:
    assert r.code == 2, r
    assert "Traceback" not in r.err, r
    message = r.err[r.err.index("error: "):]
    assert str(folder) in message and name in message and "pickle" in message, message
    assert "safetensors" in message, "the message says what to do instead"
    assert not marker.exists(), "the pickle was unpickled"
    assert leftovers(ws, outputs) == []


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_base_clip_refuses_a_pickle_at_the_source_path(tmp_path, name):
    weights = tiny_clip_folder(tmp_path / "ws/data/models/my-clip")  # local model folders live in data/models
    marker = tmp_path / "MARKER"
    plant(weights, name, marker)
    ws = make_workspace(tmp_path / "ws", {"base_clip": {"source": str(weights)}})
    r = run_in_process(ws, "stages.base_clip")
    assert_refused_pickle(r, ws, weights, name, marker, ("models/base_clip", "metrics/base_clip.json"))


def test_base_llm_refuses_a_pickle_at_the_source_path(tmp_path):
    tok = train_word_tokenizer(tokenizer_corpus(), append_eos=False, model_max_length=64)
    weights = tmp_path / "ws/data/models/my-llm"
    save_model_dir(build_world_llm(WorldLlm(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2), tok),
                   tok, weights)
    marker = tmp_path / "MARKER"
    plant(weights, "pytorch_model.bin", marker)
    ws = make_workspace(tmp_path / "ws", {"base_llm": {"source": str(weights)}})
    r = run_in_process(ws, "stages.base_llm")
    assert_refused_pickle(r, ws, weights, "pytorch_model.bin", marker, ("models/base_llm", "metrics/base_llm.json"))


def test_make_safe_refuses_a_base_clip_swapped_for_a_pickle(clip_ws, tmp_path):
    """models/base_clip replaced by hand (or pulled from a tampered remote): refused before any training."""
    ws = tmp_path / "ws"
    shutil.copytree(clip_ws, ws)
    marker = tmp_path / "MARKER"
    plant(ws / "models/base_clip", "pytorch_model.bin", marker)
    r = run_in_process(ws, "stages.make_safe", "--method", "safe_clip")
    assert_refused_pickle(r, ws, Path("models/base_clip"), "pytorch_model.bin", marker,
                          ("models/safe/safe_clip", "metrics/make_safe/safe_clip.json"))


def test_no_code_path_enables_remote_code_or_unpickling():
    """trust_remote_code is never turned on, and nothing calls torch.load / pickle.load on a file."""
    offenders = []
    for folder in ("safeclip", "stages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for pattern in (r"trust_remote_code\s*=\s*(?!False\b)", r"\btorch\.load\(", r"\bpickle\.loads?\(",
                            r"\bjoblib\.load\(", r"allow_pickle\s*=\s*True"):
                offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_readme_says_how_to_convert_a_pickle():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Robustness"):]
    assert "safetensors" in section and "pickle" in section and "allow_pickle" in section
