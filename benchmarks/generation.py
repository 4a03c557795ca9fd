"""Captions per second of the rewriter on the world model: batch 1 vs the default visu batch size.

    python benchmarks/generation.py [--model models/llm_dpo] [--n 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from safeclip.data.schemas import CAPTIONS
from safeclip.io import read_parquet
from safeclip.llm.generate import rewrite
from safeclip.llm.model import load_causal_lm
from safeclip.params import load_params


def captions_per_second(model, tok, captions, batch_size: int, max_new_tokens: int) -> float:
    rewrite(model, tok, captions[:batch_size], batch_size=batch_size, max_new_tokens=max_new_tokens)  # warm-up
    start = time.perf_counter()
    rewrite(model, tok, captions, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return len(captions) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/llm_dpo")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    params = load_params()
    torch.set_num_threads(params.base.num_threads)
    model, tok = load_causal_lm(args.model)
    caps = read_parquet("data/captions/val.parquet", CAPTIONS).column("caption").to_pylist()[:args.n]
    bs, mnt = params.visu.batch_size, params.visu.max_new_tokens
    one = captions_per_second(model, tok, caps[: max(32, args.n // 8)], 1, mnt)
    many = captions_per_second(model, tok, caps, bs, mnt)
    print(f"threads={params.base.num_threads} max_new_tokens={mnt}")
    print(f"batch 1:   {one:8.1f} captions/s")
    print(f"batch {bs}: {many:8.1f} captions/s")
    print(f"speed-up:  {many / one:8.1f}x")


if __name__ == "__main__":
    main()
