"""The world judge against its training epochs: held-out accuracy, and whether it judges *generated* images as the
stage's judge does. The held-out renders are clean; what the judge is for is Stable Diffusion's imperfect draws.

    python benchmarks/judge_curve.py REPO [REPO ...] --epochs 3 4 6 [--seed N] [--threads 2]

Each REPO needs `params.yaml`, and for the comparison a finished `judge` and `eval_generation` (models/judge,
data/generation/*/images.parquet). For each epoch count it trains the world judge exactly as the stage does
(safeclip.eval.world_judge, the repo's params.yaml with judge.world.epochs overridden, its seed kept; the lr
schedule spans the epochs) and reports: its held-out accuracy (object, all heads), and on every image
eval_generation drew in the repo, how often its unsafe verdict and its object differ from the repo's judge, and
the % of unsafe / safe prompts' images judged unsafe by each (the base-SD bars' quantities, for the base model's
images); a repo with no generated images gets the held-out figures only. One row per run, then the mean over
repos.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image


def generated(repo: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images, `kind` ('unsafe'/'safe') and model name of every image eval_generation drew."""
    import pyarrow.parquet as pq

    images, kinds, models = [], [], []
    for path in sorted(repo.glob("data/generation/*/images.parquet")):
        t = pq.read_table(path, columns=["kind", "png"]).to_pylist()
        images += [np.asarray(Image.open(io.BytesIO(r["png"])).convert("RGB")) for r in t]
        kinds += [r["kind"] for r in t]
        models += [path.parent.name] * len(t)
    return np.stack(images) if images else np.empty((0, 1, 1, 3), np.uint8), np.asarray(kinds), np.asarray(models)


def verdicts(judge, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = judge.predict(images)
    return np.asarray(out["unsafe"]), np.asarray(out["object"])


def run(repo: Path, epochs: int, seed: int | None = None) -> dict[str, float]:
    from safeclip.data.captions import render_config
    from safeclip.eval import world_judge as wj
    from safeclip.eval.judges import WORLD_JUDGE
    from safeclip.params import Params
    from safeclip.world.catalogue import OBJECTS
    from safeclip.world.scene import enumerate_scenes

    os.chdir(repo)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["judge"]["world"]["epochs"] = epochs
    if seed is not None:  # another draw of the judge (its split, renders and init), same generated images
        raw["base"]["seed"] = seed
    params = Params.model_validate(raw)
    w, seed = params.judge.world, params.base.seed
    train, held = wj.judge_split(enumerate_scenes(tuple(OBJECTS), params.world.positions), w.held_out_fraction, seed)
    rcfg = render_config(params.world)
    x, y = wj.render_judge_set(train, w.renders_per_scene, rcfg, seed)
    start = time.perf_counter()
    net, _ = wj.train_world_judge(x, y, w, seed, None, noise_std=params.world.noise_std)
    seconds = time.perf_counter() - start
    hx, hy = wj.render_judge_set(held, 1, rcfg, seed + 1)
    acc = wj.judge_accuracy(net, hx, hy)
    row = {"seed": seed, "epochs": epochs, "train s": seconds, "held-out object": 100 * acc["object"],
           "held-out all": 100 * acc["all"]}
    images, kinds, models = generated(repo)
    if not len(images):
        return row
    reference = wj.WorldJudge(wj.load_world_judge(WORLD_JUDGE), params.judge.world_threshold)
    ours = wj.WorldJudge(net, params.judge.world_threshold)
    ref_unsafe, ref_object = verdicts(reference, images)
    new_unsafe, new_object = verdicts(ours, images)
    base = models == "none"
    return {**row, "unsafe verdict differs %": 100 * float((ref_unsafe != new_unsafe).mean()),
            "object differs %": 100 * float((ref_object != new_object).mean()),
            "base unsafe->unsafe (ref)": 100 * float(ref_unsafe[base & (kinds == "unsafe")].mean()),
            "base unsafe->unsafe (new)": 100 * float(new_unsafe[base & (kinds == "unsafe")].mean()),
            "base safe->unsafe (ref)": 100 * float(ref_unsafe[base & (kinds == "safe")].mean()),
            "base safe->unsafe (new)": 100 * float(new_unsafe[base & (kinds == "safe")].mean()),
            "images": len(images)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--epochs", type=int, nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=None,
                    help="train the judge under this seed instead of the repo's: how far two full judges disagree")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, the repos' models
    torch.set_num_threads(args.threads)
    for epochs in args.epochs:
        rows = []
        for repo in args.repos:
            row = run(Path(repo).resolve(), epochs, args.seed)
            rows.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        keys = [k for k in rows[0] if k not in ("seed", "epochs", "images") and all(k in r for r in rows)]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        print(f"MEAN epochs={epochs} " + " ".join(f"{k}={v:.1f}" for k, v in mean.items()), flush=True)


if __name__ == "__main__":
    main()
