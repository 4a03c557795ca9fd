"""Wall time of a `dvc repro`, stage by stage, from its output log.

    python benchmarks/repro_stages.py --log /tmp/qs_repro.log       # parse an existing log
    python benchmarks/repro_stages.py --run /work/main [--log-out repro.log] [--keep]
                                      # git clone the repo into a temp dir, time a clean `dvc repro` there, parse it

dvc prints `Running stage 'name':` before each stage it runs (and `Stage 'name' didn't change, skipping` for
the others); our stages log lines `HH:MM:SS <logger> LEVEL ...` (tqdm bars may put them after a `\\r` or in the
middle of a physical line; they are found anywhere). The log has no timestamp when a stage *starts* or *ends*,
so the figures are an approximation:

- start of a stage = its first timestamped line (so its interpreter start-up and imports are not in it);
- duration = the next run stage's start minus this one's start: the stage's work after its first log line,
  dvc hashing and committing its outputs, and the *next* stage's start-up up to its first log line; for the
  last stage, its last timestamped line minus its start (its tail and dvc's final commit are left out);
- logged span = its last timestamped line minus its first (a lower bound on its own work);
- total = last timestamped line of the log minus the first: it leaves out dvc's start-up and the first
  stage's imports. With --run the true wall time (time.monotonic around `dvc repro`) is printed as well.

Timestamps have one-second resolution; a run that crosses midnight is unwrapped.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNNING = re.compile(r"Running stage '([^']+)':")
SKIPPED = re.compile(r"Stage '([^']+)' (?:didn't change, skipping|is cached - skipping run)")
STAMP = re.compile(r"(?<!\d)(\d{2}):(\d{2}):(\d{2}) \S+ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


@dataclass
class Stage:
    name: str
    stamps: list[int] = field(default_factory=list)  # seconds, unwrapped across midnight


def parse(text: str) -> tuple[list[Stage], list[str]]:
    """Run stages in log order with their timestamps, and the names of the stages dvc skipped."""
    events: list[tuple[int, str, object]] = []  # (offset in text, kind, payload): markers and stamps in order
    for m in RUNNING.finditer(text):
        events.append((m.start(), "run", m.group(1)))
    for m in SKIPPED.finditer(text):
        events.append((m.start(), "skip", m.group(1)))
    for m in STAMP.finditer(text):
        events.append((m.start(), "stamp", 3600 * int(m.group(1)) + 60 * int(m.group(2)) + int(m.group(3))))
    events.sort(key=lambda e: e[0])
    stages: list[Stage] = []
    skipped: list[str] = []
    day, last = 0, None
    for _, kind, payload in events:
        if kind == "run":
            stages.append(Stage(str(payload)))
        elif kind == "skip":
            skipped.append(str(payload))
        elif stages:  # stamps before the first stage (e.g. a set-up script's) are ignored
            t = int(payload)
            if last is not None and t + day < last - 12 * 3600:  # the clock went past midnight
                day += 86400
            last = t + day
            stages[-1].stamps.append(last)
    return stages, skipped


def fmt(s: float | None) -> str:
    return "-" if s is None else f"{s:8.0f}"


def clock(t: int) -> str:
    t %= 86400
    return f"{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d}"


def report(text: str, wall: float | None = None) -> None:
    stages, skipped = parse(text)
    timed = [s for s in stages if s.stamps]
    print(f"{'stage':<28} {'start':>8} {'duration s':>10} {'span s':>8} {'share':>6}")
    starts = {id(s): s.stamps[0] for s in timed}
    total = (timed[-1].stamps[-1] - timed[0].stamps[0]) if timed else 0
    for s in stages:
        if not s.stamps:
            print(f"{s.name:<28} {'-':>8} {'(no timestamped line: in the previous row)':>10}")
            continue
        i = timed.index(s)
        end = starts[id(timed[i + 1])] if i + 1 < len(timed) else s.stamps[-1]
        dur = end - s.stamps[0]
        share = f"{100 * dur / total:5.1f}%" if total else "-"
        print(f"{s.name:<28} {clock(s.stamps[0]):>8} {fmt(dur):>10} {fmt(s.stamps[-1] - s.stamps[0]):>8} {share:>6}")
    for name in skipped:
        print(f"{name:<28} {'skipped':>8}")
    print(f"{'total (first to last stamp)':<28} {'':>8} {fmt(total):>10}   = {total / 60:.1f} min, "
          f"{len(stages)} stages run, {len(skipped)} skipped")
    if wall is not None:
        print(f"{'total (dvc repro wall)':<28} {'':>8} {wall:10.0f}   = {wall / 60:.1f} min")


def run(repo: str, log_out: str | None, keep: bool) -> tuple[str, float]:
    tmp = tempfile.mkdtemp(prefix="repro_stages_")
    clone = Path(tmp) / "repo"
    subprocess.run(["git", "clone", "-q", repo, str(clone)], check=True)
    log_path = Path(log_out) if log_out else Path(tmp) / "repro.log"
    print(f"clone: {clone}\nlog:   {log_path}", flush=True)
    with open(log_path, "w") as log:
        start = time.monotonic()
        rc = subprocess.run(["dvc", "repro"], cwd=clone, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.monotonic() - start
    if rc != 0:
        print(f"dvc repro exited {rc}; see {log_path}", file=sys.stderr)
    text = log_path.read_text(errors="replace")
    if keep:
        print(f"clone kept in {tmp}")
    else:
        shutil.rmtree(clone, ignore_errors=True)  # the log stays (in the temp dir unless --log-out)
    return text, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", help="an existing `dvc repro` output log")
    src.add_argument("--run", metavar="REPO", help="git clone REPO to a temp dir and time `dvc repro` there")
    ap.add_argument("--log-out", help="with --run: where to write the repro log (default: in the temp dir)")
    ap.add_argument("--keep", action="store_true", help="with --run: keep the clone (default: delete it)")
    args = ap.parse_args()
    if args.log:
        report(Path(args.log).read_text(errors="replace"))
    else:
        text, wall = run(args.run, args.log_out, args.keep)
        report(text, wall)


if __name__ == "__main__":
    main()
