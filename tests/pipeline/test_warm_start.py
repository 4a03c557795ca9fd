"""`python -m safeclip.launch` runs a stage in a child of a warm process (safeclip/zygote.py): the same argv, working
directory, environment, streams, process group and exit status as a cold run, the repo's code read fresh, and a
stage that loses its launcher stops. A throwaway repo with a `stages` package of one small module stands in
for the real stages (the warm process imports whatever `stages/*.py` imports: here nothing heavy)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE = textwrap.dedent("""
    import json, os, sys, time
    from stages.version import VERSION  # a module the stage imports: the warm process has it imported too
    if __name__ == "__main__":
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(),
                          "pgrp": os.getpgrp(), "var": os.environ.get("PROBE_VAR"),
                          "stage": os.environ.get("DVC_STAGE"), "version": VERSION}), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        if "--exit" in sys.argv:
            sys.exit(int(sys.argv[-1]))
        if "--raise" in sys.argv:
            raise RuntimeError("boom from the stage")
        if "--sleep" in sys.argv:
            open("sleeping", "w").write(f"{os.getpid()} {os.getppid()}")
            time.sleep(float(sys.argv[-1]))
""")


@pytest.fixture
def repo():
    tmp = Path(tempfile.mkdtemp(prefix="zy", dir="/tmp"))  # short: a Unix socket's path has ~107 bytes
    (tmp / "stages").mkdir()
    (tmp / "stages/__init__.py").write_text("")
    (tmp / "stages/probe.py").write_text(STAGE)
    (tmp / "stages/version.py").write_text("VERSION = 1\n")
    (tmp / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp / "tmp"), "PYTHONPATH": f"{tmp}{os.pathsep}{ROOT}",
           "PROBE_VAR": "x", "SAFECLIP_ZYGOTE_IDLE_S": "30", "SAFECLIP_ZYGOTE": "1"}  # 1: on a GPU machine too
    yield tmp, env
    for sock in (tmp / "tmp").glob("safeclip-zygote-*/*.sock"):
        sock.unlink()  # the warm process sees its socket gone and leaves
    shutil.rmtree(tmp, ignore_errors=True)


def launch(repo: Path, env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "safeclip.launch", "stages.probe", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60, **kw)


def sockets(repo: Path) -> list[Path]:
    return sorted((repo / "tmp").glob("safeclip-zygote-*/*.sock"))


def warm_up(repo: Path, env: dict) -> dict:
    """A cold run starts the warm process; wait until it listens."""
    cold = launch(repo, env)
    assert cold.returncode == 0, cold.stderr
    deadline = time.monotonic() + 30
    while not sockets(repo):
        assert time.monotonic() < deadline, "no warm process came up"
        time.sleep(0.1)
    return json.loads(cold.stdout)


def test_a_warm_run_is_the_cold_run_in_a_forked_child(repo):
    tmp, env = repo
    cold = warm_up(tmp, env)
    warm = launch(tmp, {**env, "DVC_STAGE": "probe@1"}, "--model", "none")
    assert warm.returncode == 0 and warm.stderr == "to stderr\n", warm.stderr
    out = json.loads(warm.stdout)
    assert out["ppid"] != cold["ppid"] and out["ppid"] != out["pid"]  # not the launcher's own process
    assert (out["argv"], out["cwd"], out["var"], out["stage"]) == (["--model", "none"], str(tmp), "x", "probe@1")
    assert out["pgrp"] == cold["pgrp"]  # the launcher's group (the test's), where a Ctrl-C lands
    assert len(sockets(tmp)) == 1  # DVC_STAGE differs by stage: the same warm process
    again = json.loads(launch(tmp, env).stdout)
    assert again["ppid"] == out["ppid"]  # both children of the warm process


def test_exit_codes_and_tracebacks_are_the_stages(repo):
    tmp, env = repo
    warm_up(tmp, env)
    assert launch(tmp, env, "--exit", "3").returncode == 3
    failed = launch(tmp, env, "--raise")
    assert failed.returncode == 1 and "RuntimeError: boom from the stage" in failed.stderr


def test_an_edit_is_read_fresh_and_a_new_environment_gets_its_own_warm_process(repo):
    tmp, env = repo
    warm_up(tmp, env)
    (tmp / "stages/version.py").write_text("VERSION = 20\n")  # another size: a .pyc keyed on the same second
    assert json.loads(launch(tmp, env).stdout)["version"] == 20
    other = json.loads(launch(tmp, {**env, "PROBE_VAR": "y"}).stdout)  # cold: its own warm one starts
    assert other["var"] == "y" and other["ppid"] == os.getpid()
    off = json.loads(launch(tmp, {**env, "SAFECLIP_ZYGOTE": "0"}).stdout)
    assert off["ppid"] == os.getpid()


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def sleeping_stage(tmp: Path, env: dict, seconds: float) -> tuple[subprocess.Popen, int, int]:
    """A launcher whose stage sleeps; the launcher, the stage's pid and its parent's."""
    proc = subprocess.Popen([sys.executable, "-m", "safeclip.launch", "stages.probe", "--sleep", str(seconds)],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (tmp / "sleeping").exists() or not (tmp / "sleeping").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stage, parent = (int(x) for x in (tmp / "sleeping").read_text().split())
    return proc, stage, parent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_launcher_stops_its_stage(repo, sig):
    """SIGTERM is passed on and the launcher dies of it as the stage did; a SIGKILLed launcher cannot pass it
    on, and its stage, reading EOF on the connection, kills itself."""
    tmp, env = repo
    warm_up(tmp, env)
    proc, stage, _ = sleeping_stage(tmp, env, 60)
    assert stage != proc.pid
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == -sig
    assert wait_gone(stage), "the stage outlived its launcher"


def test_a_terminated_warm_process_lets_its_running_stage_finish_then_leaves(repo):
    tmp, env = repo
    warm_up(tmp, env)
    proc, _, warm = sleeping_stage(tmp, env, 2)
    os.kill(warm, signal.SIGTERM)
    assert proc.wait(timeout=20) == 0  # the stage's own status, not a kill
    assert not sockets(tmp) and wait_gone(warm)
    assert not list((tmp / "tmp").glob("safeclip-zygote-*/*.log"))  # a clean exit leaves no log
    assert json.loads(launch(tmp, env).stdout)["ppid"] == os.getpid()  # the next one runs cold


def test_the_warm_process_leaves_when_idle(repo):
    tmp, env = repo
    warm_up(tmp, {**env, "SAFECLIP_ZYGOTE_IDLE_S": "1"})
    deadline = time.monotonic() + 20
    while sockets(tmp):
        assert time.monotonic() < deadline, "still there after its idle time"
        time.sleep(0.1)


def test_stages_launched_while_it_warms_up_start_no_second_one(repo):
    """Its imports take seconds (here a module that sleeps at import): the launchers meanwhile run cold."""
    tmp, env = repo
    (tmp / "stages/slow.py").write_text("import time\ntime.sleep(6)\n")
    runs = [json.loads(launch(tmp, env).stdout) for _ in range(3)]
    assert runs[0]["ppid"] == os.getpid()  # cold (the others too, unless a loaded machine made them late)
    deadline = time.monotonic() + 30
    while not sockets(tmp):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    logs = list((tmp / "tmp").glob("safeclip-zygote-*/*.log"))
    assert len(logs) == 1 and logs[0].read_text().count("warm process") == 1, logs[0].read_text()


def test_warm_starts_are_off_when_asked_and_by_default_beside_a_gpu(monkeypatch):
    from safeclip import zygote

    monkeypatch.setattr(zygote.sys, "platform", "linux")
    for setting, gpu, expected in (("0", False, False), ("1", True, True), ("", True, False), ("", False, True)):
        monkeypatch.setenv("SAFECLIP_ZYGOTE", setting)
        monkeypatch.setattr(zygote.os.path, "exists", lambda p, gpu=gpu: gpu and p == "/dev/nvidiactl")
        assert zygote.enabled() is expected, (setting, gpu)
    monkeypatch.setattr(zygote.sys, "platform", "darwin")
    monkeypatch.setenv("SAFECLIP_ZYGOTE", "1")
    assert not zygote.enabled()
