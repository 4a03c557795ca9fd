"""Tiny world CLIPs and ViSU-style quadruples built in code, for fast tests of the CLIP stages' logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safeclip.clip.model import build_world_clip
from safeclip.data.captions import render_config
from safeclip.data.schemas import VISU
from safeclip.io import write_parquet
from safeclip.params import World, WorldClip
from safeclip.world.catalogue import POSITIONS, TWINNED_SAFE
from safeclip.world.grammar import caption
from safeclip.world.render import render, to_png
from safeclip.world.scene import sample_scene

TINY = WorldClip(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, projection_dim=16, patch_size=8,
                 steps=4, batch_size=8, save_every=2)


def visu_rows(n: int, split: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    cfg = render_config(World())
    rows = []
    for i in range(n):
        scene = sample_scene(rng, TWINNED_SAFE, 1, tuple(POSITIONS))
        twin = scene.unsafe_twin()
        rseed = int(rng.integers(2**31))
        rows.append({"id": f"{split}-{i}", "split": split, "safe": caption(scene), "nsfw": caption(twin),
                     "tag": twin.concepts[0], "image": {"bytes": to_png(render(scene, rseed, cfg)), "path": None},
                     "nsfw_image": {"bytes": to_png(render(twin, rseed, cfg)), "path": None}, "source": "world",
                     "gen_model": "test", "seed": rseed, "scene": scene.to_json(), "nsfw_scene": twin.to_json()})
    return rows


@pytest.fixture
def visu_dir(tmp_path):
    d = tmp_path / "visu"
    for split, n, seed in (("train", 32, 0), ("val", 16, 1), ("test", 16, 2)):
        write_parquet(d / f"{split}.parquet", visu_rows(n, split, seed), VISU)
    return d


@pytest.fixture
def tiny_bundle():
    torch.manual_seed(0)
    return build_world_clip(TINY, 32)


def killed_at(call: int, inner):
    """`inner` as an objective that raises KeyboardInterrupt on its `call`-th training call: a kill mid-run."""
    calls = {"n": 0}

    def objective(model, reference, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt("killed")
        return inner(model, reference, batch)
    objective.reference_sides = getattr(inner, "reference_sides", ())  # the trainer caches what inner reads
    return objective


def counting(inner):
    """`inner` as an objective that counts its training calls in `.trained` (how many steps really ran)."""
    def objective(model, reference, batch):
        objective.trained += int(model.training)
        return inner(model, reference, batch)
    objective.trained = 0
    objective.reference_sides = getattr(inner, "reference_sides", ())
    return objective
