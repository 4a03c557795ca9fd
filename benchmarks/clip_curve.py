"""The world base CLIP's quality against its pretraining steps: where base_clip's curve flattens, on val.

    python benchmarks/clip_curve.py REPO [REPO ...] --steps 400 600 1000 [--setting base_clip.world.batch_size=128]
                                   [--threads 2]

Needs `data/visu/{train,val}.parquet` in each REPO (`dvc repro visu`). For each repo (one per seed) and each step
count it pretrains a base CLIP exactly as the stage does (safeclip.clip.pretrain, the cosine schedule spanning that
many steps, the repo's params.yaml with the `--setting` overrides, its seed kept) and scores it on the val
quadruples with evaluate's own metrics: safe T->V R@1 and R@5 (the base bars read them on test), T*->V* R@1
(does it know the unsafe concepts?) and the % of unsafe text's top-1 images that are unsafe (a base bar). A
separate run per step count, since the cosine schedule depends on the total; `--steps 0` scores the repo's own
models/base_clip instead. One row per run, then the mean.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

TRAIN, VAL = "data/visu/train.parquet", "data/visu/val.parquet"


KEYS = {"T->V R@1": "retrieval.t_to_v.r1", "T->V R@5": "retrieval.t_to_v.r5",
        "T*->V* R@1": "retrieval.t_star_to_v_star.r1", "unsafe top-1 %": "unsafe_retrieved.unsafe_text.top1"}


def run(repo: Path, steps: int, setting: str, log: logging.Logger) -> dict[str, float]:
    from make_safe_sweep import _override

    from safeclip.clip.model import load_clip
    from safeclip.eval.embed import embed_split
    from safeclip.eval.suite import retrieval_metrics
    from safeclip.params import Params

    os.chdir(repo)
    raw = _override(yaml.safe_load(Path("params.yaml").read_text()), setting)
    if steps == 0:  # the repo's own base CLIP, as the stage trained it
        params = Params.model_validate(raw)
        bundle, seconds = load_clip("models/base_clip"), 0.0
        steps = params.base_clip.world.steps
    else:
        raw["base_clip"]["world"]["steps"] = steps
        params = Params.model_validate(raw)
        bundle, seconds = train(params, log)
    with torch.no_grad():
        emb, _ = embed_split(bundle, VAL, params.evaluate.batch_size)
        m = retrieval_metrics(emb, [1, 5], [1])
    return {"seed": params.base.seed, "steps": steps, "train s": seconds, **{k: m[v] for k, v in KEYS.items()}}


def train(params, log: logging.Logger):
    from safeclip.clip.model import build_world_clip
    from safeclip.clip.pretrain import pretrain, pretraining_pool
    from safeclip.clip.training import TrainState, make_accelerator
    from safeclip.data.captions import render_config
    from safeclip.data.schemas import VISU
    from safeclip.io import read_parquet

    w = params.base_clip.world
    rows = read_parquet(TRAIN, VISU).to_pylist()
    captions, labels, images = pretraining_pool(rows, w.renders_per_scene, render_config(params.world),
                                                params.base.seed, TRAIN)
    torch.manual_seed(params.base.seed)
    bundle = build_world_clip(w, params.world.image_size)
    acc = make_accelerator(params.base)
    with tempfile.TemporaryDirectory() as tmp:
        state = TrainState(acc, Path(tmp) / "ckpt", "clip_curve", log)
        start = time.perf_counter()
        pretrain(bundle, captions, labels, images, w, w.steps, params.base.seed, acc, state, log)
        seconds = time.perf_counter() - start
    bundle.model = acc.unwrap_model(bundle.model).eval()
    return bundle, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    ap.add_argument("--setting", default="", help="comma-separated key=value overrides of each repo's params.yaml")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, the repos' data
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("clip_curve")
    for steps in args.steps:
        mine = []
        for repo in args.repos:
            row = run(Path(repo).resolve(), steps, args.setting, log)
            mine.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        mean = {k: float(np.mean([r[k] for r in mine])) for k in mine[0] if k not in ("seed", "steps")}
        print(f"MEAN steps={mine[0]['steps']}{' (the repos own)' if not steps else ''} "
              + " ".join(f"{k}={v:.1f}" for k, v in mean.items()), flush=True)


if __name__ == "__main__":
    main()
