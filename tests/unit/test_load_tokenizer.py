"""A model folder a stage saves must not depend on the environment its input was loaded in: transformers copies
`local_files_only` (forced on by HF_HUB_OFFLINE=1, which `make repro` sets and a bare `dvc repro` does not) into
a loaded tokenizer's config, and so into every tokenizer_config.json saved from it."""

import json
from pathlib import Path

import pytest
import transformers.tokenization_utils_base as tub

from safeclip.clip.model import build_world_clip, load_clip
from safeclip.hub import load_tokenizer
from tests.clip.conftest import TINY


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clip")
    build_world_clip(TINY, 32).save(d)
    return d


@pytest.mark.parametrize("load", [load_tokenizer, lambda d: load_clip(d).tokenizer], ids=["tokenizer", "clip"])
def test_a_saved_tokenizer_is_the_same_online_and_offline(clip_dir, tmp_path, monkeypatch, load) -> None:
    saved = []
    for offline in (True, False):
        monkeypatch.setattr(tub, "is_offline_mode", lambda offline=offline: offline)
        out = tmp_path / f"offline-{offline}"
        load(clip_dir).save_pretrained(out)
        saved.append((out / "tokenizer_config.json").read_text())
    assert saved[0] == saved[1]
    assert "local_files_only" not in json.loads(saved[0])
