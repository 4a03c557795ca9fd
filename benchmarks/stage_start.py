"""What a stage process pays before its work: the stage module's imports and setup(), in a fresh interpreter, with
the number of full (oldest-generation) collections they set off. Every DVC stage pays it once, so the world DAG
pays it 26 times and each end-to-end test run as often.

    python benchmarks/stage_start.py [--repeat 3] [--stages evaluate base_sd ...] [--warm]

--warm: the same, in a child forked from a warm process (safeclip/zygote.py's `warm()`, which is what
`python -m safeclip.launch` does once one is up); also prints what the warm process's imports took.

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


WARM = """
import json, os, sys, time
t = time.perf_counter()
from safeclip import zygote
zygote.warm()
print(json.dumps({{"warm_seconds": time.perf_counter() - t}}), flush=True)
for stage in {stages!r}:
    for _ in range({repeat}):
        r, w = os.pipe()
        t = time.perf_counter()
        if os.fork() == 0:
            import gc, importlib
            importlib.import_module(f"stages.{{stage}}")
            from safeclip.runtime import setup
            setup("probe", 0, 2)
            os.write(w, json.dumps({{"stage": stage, "seconds": time.perf_counter() - t,
                                    "full_collections": gc.get_stats()[2]["collections"]}}).encode())
            os._exit(0)
        os.close(w)
        print(os.read(r, 4096).decode(), flush=True)
        os.wait()
"""


def measure(stage: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(stage=stage)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_warm(stages: list[str], repeat: int) -> tuple[float, dict[str, list[dict]]]:
    out = subprocess.run([sys.executable, "-c", WARM.format(stages=stages, repeat=repeat)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    by_stage: dict[str, list[dict]] = {}
    for row in rows[1:]:
        by_stage.setdefault(row["stage"], []).append(row)
    return rows[0]["warm_seconds"], by_stage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=sorted(p.stem for p in (ROOT / "stages").glob("*.py")
                                                              if p.stem != "__init__"))
    ap.add_argument("--warm", action="store_true", help="fork each from a warm process instead")
    args = ap.parse_args()
    total = 0.0
    if args.warm:
        warm_s, warm_runs = measure_warm(args.stages, args.repeat)
        print(f"{'warm process':18s} {warm_s:5.2f} s of imports, once")
    for stage in args.stages:
        runs = warm_runs[stage] if args.warm else [measure(stage) for _ in range(args.repeat)]
        seconds = statistics.median(r["seconds"] for r in runs)
        total += seconds
        print(f"{stage:18s} {seconds:5.2f} s  full collections {runs[0]['full_collections']}")
    print(f"{'sum':18s} {total:5.2f} s over {len(args.stages)} stage modules")


if __name__ == "__main__":
    main()
