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

The world bar reads the drop on test, whose gallery (400 images) is four times val's (100), and R@1 falls with the
gallery: on seed 1's test embeddings the drop is 5.8 on random 100-image subsets, 9.4 on 200 and 13.8 on all 400.
So "T->V drop@N" also scores val's safe captions against their images among N - n_val train images besides
(`--gallery`, default: the size of the repo's test split): the bar's difficulty, on captions never used for test.
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

import pyarrow.parquet as pq
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


def t_to_v_at_n(bundle, val: dict[str, torch.Tensor], n: int, batch_size: int) -> float:
    """T->V R@1 of val's safe captions (`val`: the bundle's val embeddings, already computed) in a gallery of
    val's images and the first n - n_val train images."""
    from safeclip.eval.embed import embed_split
    from safeclip.eval.retrieval import recall_at_k
    from safeclip.methods import runners

    train, _ = embed_split(bundle, runners.TRAIN, batch_size)
    n_val = len(val["text_safe"])
    gallery = torch.cat([val["image_safe"], train["image_safe"][:n - n_val]])
    return 100 * recall_at_k(val["text_safe"], gallery, torch.arange(n_val), [1])[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("repos", nargs="+")
    ap.add_argument("--method", default="safe_clip", choices=["safe_clip", "safer_clip"])
    ap.add_argument("--setting", action="append", default=None,
                    help="comma-separated key=value overrides; repeat for more settings ('' = the repo's params)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gallery", type=int, default=None,
                    help="images in the drop@N gallery: val's plus train ones (default: the test split's size)")
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
            "T*->V R@1": "retrieval.t_star_to_v.r1", "PU": "safeground.PU", "T->V drop@N": "t_to_v.r1@N"}
    rows: dict[str, list[dict[str, float]]] = {}
    here = Path.cwd()
    log = logging.getLogger("make_safe_sweep")
    for repo in args.repos:
        os.chdir(Path(repo).resolve())
        raw = yaml.safe_load(Path("params.yaml").read_text())  # each setting overrides a copy
        batch_size = Params.model_validate(raw).evaluate.batch_size
        base_bundle = load_clip(runners.BASE_CLIP)
        base_emb, _ = embed_split(base_bundle, runners.VAL, batch_size)
        base = retrieval_metrics(base_emb, [1], [1])
        n_val = len(base_emb["text_safe"])
        n = args.gallery or pq.read_metadata("data/visu/test.parquet").num_rows
        if n - n_val > pq.read_metadata(runners.TRAIN).num_rows:
            raise SystemExit(f"{repo}: --gallery {n} needs {n - n_val} train images; {runners.TRAIN} has fewer")
        base["t_to_v.r1@N"] = t_to_v_at_n(base_bundle, base_emb, n, batch_size)
        print(f"{repo}: base on val: " + ", ".join(f"{k} {base[v]:.1f}" for k, v in keys.items() if "drop" not in k)
              + f", T->V R@1 {base['retrieval.t_to_v.r1']:.1f} (gallery {n_val}), {base['t_to_v.r1@N']:.1f} (N = {n})",
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
            m["t_to_v.r1@N"] = t_to_v_at_n(bundle, emb, n, batch_size)
            values = {k: (base[v] - m[v] if "drop" in k else m[v]) for k, v in keys.items()}
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
