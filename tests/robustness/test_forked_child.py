"""The test harness's forked stage runs survive a child killed while it held tqdm's write lock (shared by every
process forked from the test process): the next child takes a lock of its own instead of blocking forever."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.robustness.util import private_tqdm_lock, run_forked

PROBE = "def main():\n    from tqdm import tqdm\n    print(sum(tqdm(range(3))))\n"


def _hold_lock_until_killed(ready) -> None:
    from tqdm import tqdm

    tqdm.get_lock().acquire()
    ready.set()
    signal.pause()


@pytest.fixture
def poisoned_lock():
    """tqdm's shared lock, held by a child that was SIGKILLed; the test process gets a fresh one afterwards."""
    from tqdm import tqdm

    tqdm.get_lock()  # created before the fork, as after any bar in the test process: the children share it
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock_until_killed, args=(ready,), daemon=True)
    holder.start()
    assert ready.wait(30), "the holder never took the lock"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    assert not tqdm.get_lock().locks[0].acquire(timeout=0.2), "the shared lock should still be held"
    yield
    private_tqdm_lock()  # this process's lock stays held for good otherwise


def test_a_forked_stage_draws_its_bars_after_a_child_died_holding_the_lock(poisoned_lock, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "tqdm_probe.py").write_text(PROBE)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    r = run_forked(tmp_path, "tqdm_probe", log=tmp_path / "probe.log", timeout=30)
    assert r.code == 0 and "3" in r.err.split(), r
