"""Shared, expensive fixtures: the world chain up to visu at CI size, built once per session, and a tiny-CLIP
workspace for make_safe. Every test copies what it needs, so nothing here is ever modified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from safeclip.clip.model import build_world_clip
from safeclip.data.schemas import VISU
from safeclip.io import write_parquet
from tests.clip.conftest import TINY, visu_rows
from tests.robustness.util import make_workspace, run_in_process

# The world pipeline at 5% scale. sft: 100 steps (enough for DPO to find preference pairs), checkpoints every
# 20; dpo: 12 steps, a checkpoint every 3; visu: shards of 4 rows (8 for the 30 train captions). The kill tests
# use these same params, so this chain's outputs are their uninterrupted reference.
CHAIN = {
    "base": {"scale": 0.05},
    "sft": {"epochs": 20.0, "learning_rate": 0.003, "save_steps": 20, "logging_steps": 5,
            "eval": {"n_val_captions": 20}},
    "dpo": {"batch_size": 4, "save_steps": 3, "logging_steps": 1, "eval": {"n_val_captions": 20}},
    "visu": {"shard_size": 4},
}

# make_safe on a tiny random CLIP and 32/16/16 hand-made quadruples: 40 steps at batch 8, a checkpoint at
# every validation (10 steps).
CLIP_PARAMS = {
    "base": {"scale": 1.0},
    "make_safe": {
        "safe_clip": {"lora": {"r": 4, "alpha": 4.0}, "learning_rate": 1e-2, "batch_size": 8, "max_steps": 40,
                      "eval_every": 10, "patience": 100},
        "safer_clip": {"lora": {"r": 4, "alpha": 4.0}, "learning_rate": 1e-2, "batch_size": 8, "epochs": 10,
                       "eval_every": 10, "curriculum": [0.5], "patience": 100},
    },
    "evaluate": {"batch_size": 16},
}


@pytest.fixture(scope="session", autouse=True)
def hf_caches(tmp_path_factory):
    """Keep `datasets`' and the hub's caches out of the user's home: tests must not depend on what is cached."""
    import datasets
    import huggingface_hub.constants as hub

    root = tmp_path_factory.mktemp("hf-home")
    saved = datasets.config.HF_DATASETS_CACHE, hub.HF_HUB_CACHE
    datasets.config.HF_DATASETS_CACHE = root / "datasets"
    hub.HF_HUB_CACHE = str(root / "hub")
    yield root
    datasets.config.HF_DATASETS_CACHE, hub.HF_HUB_CACHE = saved


def _run(ws: Path, module: str, *args: str) -> None:
    r = run_in_process(ws, module, *args)
    assert r.code == 0, f"{module} failed while building the fixture: {r}"


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """ingest -> captions -> base_llm -> sft -> dpo -> visu, uninterrupted (~40 s)."""
    ws = make_workspace(tmp_path_factory.mktemp("world"), CHAIN)
    for stage in ("ingest", "captions", "base_llm", "sft", "dpo", "visu"):
        _run(ws, f"stages.{stage}")
    return ws


@pytest.fixture(scope="session")
def clip_ws(tmp_path_factory) -> Path:
    """data/visu, models/base_clip (tiny, random) and data/safer_clip: what make_safe reads."""
    ws = make_workspace(tmp_path_factory.mktemp("clip"), CLIP_PARAMS)
    for split, n, seed in (("train", 32, 0), ("val", 16, 1), ("test", 16, 2)):
        write_parquet(ws / f"data/visu/{split}.parquet", visu_rows(n, split, seed), VISU)
    torch.manual_seed(0)
    build_world_clip(TINY, 32).save(ws / "models/base_clip")
    _run(ws, "stages.safer_targets")
    return ws


@pytest.fixture
def empty_hf_home(tmp_path) -> dict[str, str]:
    """Environment for a subprocess that sees an empty Hugging Face cache and no network."""
    home = tmp_path / "hf-home"
    home.mkdir()
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PATH": os.environ.get("PATH", "")}
