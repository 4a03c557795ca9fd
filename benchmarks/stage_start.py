"""What a stage process pays before its work: the stage module's imports and setup(), in a fresh interpreter, with
the number of full (oldest-generation) collections they set off. Every DVC stage pays it once, so the world DAG
pays it 27 times and each end-to-end test run as often.

    python benchmarks/stage_start.py [--repeat 3] [--stages evaluate base_sd ...]

Seconds are the median over the repeats; run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import gc, json, time
t = time.perf_counter()
import stages.{stage}
from safeclip.runtime import setup
setup("probe", 0, 2)
print(json.dumps({{"seconds": time.perf_counter() - t, "full_collections": gc.get_stats()[2]["collections"]}}))
"""


def measure(stage: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(stage=stage)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=sorted(p.stem for p in (ROOT / "stages").glob("*.py")
                                                              if p.stem != "__init__"))
    args = ap.parse_args()
    total = 0.0
    for stage in args.stages:
        runs = [measure(stage) for _ in range(args.repeat)]
        seconds = statistics.median(r["seconds"] for r in runs)
        total += seconds
        print(f"{stage:18s} {seconds:5.2f} s  full collections {runs[0]['full_collections']}")
    print(f"{'sum':18s} {total:5.2f} s over {len(args.stages)} stage modules")


if __name__ == "__main__":
    main()
