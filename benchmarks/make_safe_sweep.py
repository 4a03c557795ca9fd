"""A training method's settings chosen on the **val** split, never on test: make_safe@METHOD retrained under
each `--set` override on one or more finished runs (e.g. seeds 0-2), scored on the quantities its world bars read.

    python benchmarks/make_safe_sweep.py REPO [REPO ...] --method safe_clip \
        --setting '' --setting make_safe.safe_clip.max_steps=400 \
        --setting make_safe.safe_clip.max_steps=400,make_safe.safe_clip.learning_rate=3e-3

Each REPO needs models/base_clip and data/visu/{train,val}.parquet (`dvc repro visu base_clip`, plus safer_targets
for safer_clip). A setting is a comma-separated list of `key=value` overrides of the repo's params.yaml (its seed
and everything else kept); the empty setting `''` is the repo's own params. Training is the stage's own runner,
checkpointing into a temp dir, so the runs' checkpoints and models are left alone. Prints per setting the per-repo
values and their mean: T->V R@1 drop from the base, % unsafe among unsafe text's top-1 images, T*->V R@1, PU.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import yaml


def _override(raw: dict, setting: str) -> dict:
    """`a.b.c=v,...` applied to a nested dict; values parsed as YAML (numbers, lists, null)."""
    for item in filter(None, re.split(r",(?=[\w.]+=)", setting)):  # a comma inside a list value stays in it
        key, _, value = item.partition("=")
        node = raw
        *path, leaf = key.strip().split(".")
        for part in path:
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"unknown key {key!r}")
        node[leaf] = yaml.safe_load(value)
    return raw


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--method", default="safe_clip", choices=["safe_clip", "safer_clip"])
    ap.add_argument("--setting", action="append", default=None,
                    help="comma-separated key=value overrides; repeat for more settings ('' = the repo's params)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true",
                    help="score the repo's models/safe/METHOD for the '' setting instead of retraining it")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from sweep_table import cells

    from safeclip.clip.model import load_clip
    from safeclip.eval.embed import embed_split
    from safeclip.eval.suite import retrieval_metrics
    from safeclip.methods import runners
    from safeclip.params import Params

    settings = args.setting or [""]
    keys = {"T->V drop": "retrieval.t_to_v.r1", "unsafe top-1 %": "unsafe_retrieved.unsafe_text.top1",
            "T*->V R@1": "retrieval.t_star_to_v.r1", "PU": "safeground.PU"}
    rows: dict[str, list[dict[str, float]]] = {}
    here = Path.cwd()
    log = logging.getLogger("make_safe_sweep")
    for repo in args.repos:
        os.chdir(Path(repo).resolve())
        raw = yaml.safe_load(Path("params.yaml").read_text())  # each setting overrides a copy
        batch_size = Params.model_validate(raw).evaluate.batch_size
        base_emb, _ = embed_split(load_clip(runners.BASE_CLIP), runners.VAL, batch_size)
        base = retrieval_metrics(base_emb, [1], [1])
        print(f"{repo}: base on val: " + ", ".join(f"{k} {base[v]:.1f}" for k, v in keys.items() if k != "T->V drop"),
              flush=True)
        for setting in settings:
            params = Params.model_validate(_override(copy.deepcopy(raw), setting))
            t0 = time.perf_counter()
            if not setting and args.reuse:
                bundle = load_clip(f"models/safe/{args.method}")
            else:
                with tempfile.TemporaryDirectory() as tmp, \
                        mock.patch.object(runners, "_ckpt", lambda method, tmp=tmp: Path(tmp) / method):
                    bundle = runners.RUNNERS[args.method](params, log).bundle
            emb, _ = embed_split(bundle, runners.VAL, batch_size)
            m = retrieval_metrics(emb, [1], [1])
            values = {k: (base[v] - m[v] if k == "T->V drop" else m[v]) for k, v in keys.items()}
            rows.setdefault(setting, []).append(values)
            print(f"  {setting or '(params.yaml)'}: " + ", ".join(f"{k} {x:.1f}" for k, x in values.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    os.chdir(here)
    print(f"\n{'setting':60} " + " ".join(f"{k:>24}" for k in keys) + "   (per repo; mean)")
    for setting, vals in rows.items():
        print(f"{setting or '(params.yaml)':60} " + " ".join(f"{c:>24}" for c in cells(vals, list(keys))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
