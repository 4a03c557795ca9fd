"""Make the world's curated pairs (committed as data/curated/world_pairs.jsonl).

Like real curated data and ViSU, about 30% of the pairs drift off the safe scene (another colour, position
or background), so a model fine-tuned on them keeps the scene only ~70% of the time: the headroom that DPO,
which prefers on-scene rewrites, must then claim.

    python -m safeclip.world.curate --out data/curated/world_pairs.jsonl    # the default world's positions
    python -m safeclip.world.curate --out pairs_grid.jsonl \
        --positions "top left,top,top right,left,centre,right,bottom left,bottom,bottom right"   # the whole grid
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from safeclip.io import write_text
from safeclip.params import World
from safeclip.world.catalogue import BACKGROUNDS, OBJECT_COLOURS, TWINNED_SAFE
from safeclip.world.grammar import caption
from safeclip.world.scene import Scene, SceneObject, enumerate_scenes, is_valid


def _drift(scene: Scene, rng: np.random.Generator, positions: Sequence[str]) -> Scene:
    """Change exactly one layout attribute of a one-object scene, keeping it valid."""
    o = scene.objects[0]
    while True:
        kind = ("colour", "position", "background")[rng.integers(3)]
        if kind == "colour":
            new = Scene(scene.background, (SceneObject(o.name, str(rng.choice(list(OBJECT_COLOURS))), o.position),))
        elif kind == "position":
            new = Scene(scene.background, (SceneObject(o.name, o.colour, str(rng.choice(list(positions)))),))
        else:
            new = Scene(str(rng.choice(list(BACKGROUNDS))), scene.objects)
        if new.layout() != scene.layout() and is_valid(new):
            return new


def make_world_pairs(n: int, drift_fraction: float, seed: int, positions: Sequence[str]) -> list[dict]:
    """`n` pairs over the scenes at `positions` (a world with fewer positions, params `world.positions`, needs
    its own pairs file: `ingest.pairs_file`)."""
    rng = np.random.default_rng(seed)
    pool = enumerate_scenes(TWINNED_SAFE, positions)
    # balance objects (and so concepts): n // 8 scenes per twinned object, then fill
    by_obj = {name: [s for s in pool if s.objects[0].name == name] for name in TWINNED_SAFE}
    chosen: list[Scene] = []
    for i in range(n):
        cands = by_obj[TWINNED_SAFE[i % len(TWINNED_SAFE)]]
        chosen.append(cands.pop(int(rng.integers(len(cands)))))
    order = rng.permutation(n)
    n_drift = round(n * drift_fraction)
    rows = []
    for rank, idx in enumerate(order):
        safe = chosen[idx]
        unsafe = safe.unsafe_twin()
        if rank < n_drift:
            unsafe = _drift(unsafe, rng, positions)
        rows.append({"safe": caption(safe), "unsafe": caption(unsafe), "tag": unsafe.concepts[0]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/curated/world_pairs.jsonl"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--drift-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--positions", default=",".join(World().positions),
                    help="comma-separated grid positions (default: params world.positions' default)")
    a = ap.parse_args()
    rows = make_world_pairs(a.n, a.drift_fraction, a.seed, [p.strip() for p in a.positions.split(",")])
    write_text(a.out, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
