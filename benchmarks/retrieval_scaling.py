"""Time and peak memory of our chunked retrieval as the gallery grows (1k, 10k, 100k embeddings by default).

    python benchmarks/retrieval_scaling.py [--sizes 1000 10000 100000] [--queries 1000] [--dim 64] [--threads 1]
    python benchmarks/retrieval_scaling.py --one 100000 --fn topk    # one size and function, one JSON line

Each (gallery size, function) runs in a fresh subprocess (`--one N --fn F`), so its peak resident set
(`ru_maxrss`, which sees torch's allocations, unlike tracemalloc) is its own. Columns: "peak RSS" is the larger
of the two processes' peaks; "inputs" is what the random queries, gallery and targets add to the peak after the
imports and a tiny warm-up call (the import baseline); "recall" / "topk" is what each call then adds on top of
that: the working memory of the chunked loops, i.e. normalised copies of queries and gallery (which grow with
the gallery) plus the per-chunk score blocks (bounded by queries x CHUNK). "full matrix" is what an unchunked
queries x gallery float32 similarity matrix alone would take. Times are the median of --repeat calls of
`recall_at_k` (ks 1, 5, 10, 20) and of `topk_indices` (k 10) on random vectors.

glibc keeps freed heap blocks, and how much it keeps varies run to run (the topk figure at 100k has been seen
at 167 and 284 MB); `--mmap-threshold 262144` makes it hand large blocks back, so the per-call figure is the
live working set: then it grows only by the normalised gallery copy (N x dim x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from safeclip.eval.retrieval import CHUNK


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(n: int, queries: int, dim: int, repeat: int, threads: int, fn: str) -> dict:
    import torch

    from safeclip.eval.retrieval import recall_at_k, topk_indices

    torch.set_num_threads(threads)
    recall_at_k(torch.randn(8, dim), torch.randn(16, dim), list(range(8)))  # first-call costs out of the baseline
    topk_indices(torch.randn(8, dim), torch.randn(16, dim), 10)
    base = rss_mb()
    g = torch.Generator().manual_seed(0)
    q, gallery = torch.randn(queries, dim, generator=g), torch.randn(n, dim, generator=g)
    targets = torch.randint(0, n, (queries,), generator=g)
    data = rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        if fn == "recall":
            recall_at_k(q, gallery, targets)
        else:
            topk_indices(q, gallery, 10)
        times.append(time.perf_counter() - start)
    return {"n": n, "fn": fn, "s": statistics.median(times), "base_mb": base, "data_mb": data, "peak_mb": rss_mb(),
            "full_matrix_mb": queries * n * 4 / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", type=int, default=None, help="run one gallery size here and print a JSON line")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in the children, e.g. 262144: large blocks are "
                         "then mmapped and returned on free, so the peak shows the live working set rather than "
                         "what the allocator keeps (default: unset, what a user gets)")
    ap.add_argument("--fn", choices=["recall", "topk"], default="recall", help="with --one: the function timed")
    args = ap.parse_args()
    common = ["--queries", str(args.queries), "--dim", str(args.dim), "--repeat", str(args.repeat),
              "--threads", str(args.threads)]
    if args.one is not None:
        print(json.dumps(one(args.one, args.queries, args.dim, args.repeat, args.threads, args.fn)))
        return
    env = dict(os.environ)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    rows: dict[tuple[int, str], dict] = {}
    for n in args.sizes:
        for fn in ("recall", "topk"):
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--fn", fn, *common], env=env,
                                 capture_output=True, text=True, check=True)
            rows[n, fn] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"queries={args.queries} dim={args.dim} threads={args.threads} chunk={CHUNK} repeat={args.repeat} "
          "(median time); one fresh process per size and function; "
          f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'unset'}")
    print(f"{'gallery':>9} {'recall s':>9} {'topk10 s':>9} {'peak RSS MB':>12} {'inputs MB':>10} "
          f"{'recall MB':>10} {'topk MB':>8} {'full matrix MB':>15}")
    for n in args.sizes:
        r, t = rows[n, "recall"], rows[n, "topk"]
        print(f"{n:>9,} {r['s']:9.3f} {t['s']:9.3f} {max(r['peak_mb'], t['peak_mb']):12.1f} "
              f"{r['data_mb'] - r['base_mb']:10.1f} {r['peak_mb'] - r['data_mb']:10.1f} "
              f"{t['peak_mb'] - t['data_mb']:8.1f} {r['full_matrix_mb']:15.1f}")
    base = statistics.median(r["base_mb"] for r in rows.values())
    print(f"import baseline (peak RSS after imports and a tiny warm-up call): {base:.1f} MB")
    if len(args.sizes) > 1:
        a, b = args.sizes[0], args.sizes[-1]
        print(f"gallery x{b / a:.0f}: recall time x{rows[b, 'recall']['s'] / rows[a, 'recall']['s']:.1f}, "
              f"topk time x{rows[b, 'topk']['s'] / rows[a, 'topk']['s']:.1f}; full matrix at {b:,}: "
              f"{rows[b, 'recall']['full_matrix_mb']:.0f} MB")

if __name__ == "__main__":
    main()
