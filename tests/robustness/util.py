"""Running stages the way a user does, but cheaply: workspaces with a tiny params.yaml, stage entry points run
in-process (exit code and stderr captured), in a forked child that can be SIGKILLed, or as a real subprocess.

Forking the test process (torch, trl and transformers already imported) instead of starting `python -m` saves
~8 s of imports per run on the 2-core CI machine; the child is a real process, so SIGKILL is a real kill.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from safeclip.params import default_params_dict

ROOT = Path(__file__).resolve().parents[2]
CURATED = ROOT / "data/curated/world_pairs.jsonl"


def merge(base: dict, overrides: Mapping) -> dict:
    """`base` with `overrides` applied key by key (nested mappings merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# Tests share 2 cores with each other, and run stages in forked children: a child that starts an OpenMP pool of
# 2 threads after the parent used one hangs (GNU OpenMP is not fork-safe). The default DAG's 2 threads are for a
# stage alone on the machine.
TEST_BASE = {"base": {"num_threads": 1}}


def write_params(ws: Path, overrides: Mapping) -> dict:
    """params.yaml = the code's defaults (the committed world profile), one thread per stage, + `overrides`."""
    params = merge(merge(default_params_dict(), TEST_BASE), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_workspace(ws: Path, overrides: Mapping) -> Path:
    """A folder a stage can run in: params.yaml and the curated pairs (the only input in git it reads)."""
    ws.mkdir(parents=True, exist_ok=True)
    write_params(ws, overrides)
    (ws / "data/curated").mkdir(parents=True, exist_ok=True)
    shutil.copy2(CURATED, ws / "data/curated/world_pairs.jsonl")
    return ws


def clone_workspace(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a built workspace without the outputs in `drop` (and without any checkpoints)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    for rel in drop:
        p = dst / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return dst


@dataclass
class Result:
    code: int | None  # exit code; for a killed child, minus the signal number
    err: str  # stderr (and stdout) of the run: the user-facing message and the log

    def __repr__(self) -> str:  # shown by pytest when an assertion on a Result fails
        return f"Result(code={self.code}, err=...{self.err[-3000:]!r})"


def run_in_process(ws: Path, module: str, *args: str) -> Result:
    """Call the stage's main() as `python -m module` would, in `ws`; exceptions other than SystemExit
    propagate (a traceback is exactly what these tests must not see)."""
    buf = io.StringIO()
    argv, cwd = sys.argv, os.getcwd()
    code: int | None = 0
    try:
        os.chdir(ws)
        sys.argv = [module, *args]
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            try:
                importlib.import_module(module).main()
            except SystemExit as e:
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(cwd)
        _reset_logging()
    return Result(code, buf.getvalue())


def _reset_logging() -> None:
    """The stage's setup() pointed the root logger at our buffer: point it back at the real stderr."""
    import logging

    for h in list(logging.root.handlers):
        logging.root.removeHandler(h)


def private_tqdm_lock() -> None:
    """Give this process tqdm write locks of its own.

    tqdm guards every bar with a multiprocessing RLock that all processes forked from one share (and a thread
    RLock whose held state a fork copies). A child SIGKILLed while it held the shared lock leaves it held for
    good, and every later child then blocks on its first progress bar: `make test-fast` (one process) hung in
    test_visu_shards_of_another_model_are_not_reused that way, after the kill tests before it."""
    from tqdm import std

    std.TqdmDefaultWriteLock.th_lock = threading.RLock()
    std.TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    lock = std.TqdmDefaultWriteLock()
    classes = [std.tqdm]
    while classes:  # tqdm.auto's and other subclasses may hold a lock of their own
        cls = classes.pop()
        cls.set_lock(lock)
        classes.extend(cls.__subclasses__())


def _child(ws: str, module: str, args: tuple[str, ...], log: str) -> None:
    private_tqdm_lock()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # lives as long as the child
    os.chdir(ws)
    sys.argv = [module, *args]
    importlib.import_module(module).main()


class Forked:
    """A stage running in a forked child process, its output going to `log`."""

    def __init__(self, ws: Path, module: str, *args: str, log: Path):
        self.log = log
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=_child, args=(str(ws), module, args, str(log)), daemon=True)
        self.proc.start()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill_when(self, ready: Callable[[], bool], timeout: float = 300.0) -> None:
        """SIGKILL the child as soon as `ready()` holds; fail if it ended (or never got there) first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.proc.is_alive():
                raise AssertionError(f"the stage ended (exit {self.proc.exitcode}) before the kill point:\n"
                                     f"{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"kill point not reached in {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.01)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(30)
        assert self.proc.exitcode == -signal.SIGKILL, f"exit {self.proc.exitcode}: {self.text()[-3000:]}"

    def wait(self, timeout: float = 300.0) -> Result:
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            raise AssertionError(f"stage still running after {timeout} s:\n{self.text()[-3000:]}")
        return Result(self.proc.exitcode, self.text())


def run_forked(ws: Path, module: str, *args: str, log: Path, timeout: float = 300.0) -> Result:
    return Forked(ws, module, *args, log=log).wait(timeout)


def run_subprocess(ws: Path, module: str, *args: str, env: Mapping[str, str] | None = None,
                   timeout: float = 120.0) -> tuple[Result, float]:
    """`python -m module` in `ws`, as DVC runs it; returns the result and the wall time in seconds."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ws, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout + proc.stderr), time.monotonic() - t0


def leftovers(ws: Path, outputs: tuple[str, ...]) -> list[str]:
    """Outputs (or temporary siblings of them) that exist in `ws`: what DVC could cache after a failure."""
    found = []
    for rel in outputs:
        p = ws / rel
        if p.exists():
            found.append(rel)
        if p.parent.exists():
            found += [str(q.relative_to(ws)) for q in p.parent.glob(f".{p.name}.*")]
    return found


def files_equal(a: Path, b: Path) -> list[str]:
    """Relative paths whose bytes differ between two files or folders (missing on one side counts)."""
    if a.is_file() or b.is_file():
        return [] if a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes() else [a.name]
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()} | {p.relative_to(b) for p in b.rglob("*")
                                                                        if p.is_file()}
    return sorted(str(n) for n in names if not ((a / n).is_file() and (b / n).is_file()
                                                and (a / n).read_bytes() == (b / n).read_bytes()))
