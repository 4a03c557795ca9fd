"""A warm start for stage processes: one process imports what the stages import (torch, transformers,
diffusers, trl, ...) once, and every stage forks from it instead of importing them again.

A stage process spent ~3-4 s of a 2-core machine's time importing its libraries before its first line of work
(`benchmarks/stage_start.py`), and the world DAG starts 26 of them, the tests ~100. Forked from a process that
has them imported, a stage starts in ~0.2 s. `python -m safeclip.launch` asks for a warm process first:

- none running for this interpreter, environment, working directory and terminal session: the launcher starts
  one in the background and runs its stage itself, cold, as before; the next stage finds it warm;
- one running: it forks; the child takes the launcher's stdin/stdout/stderr (passed over a Unix socket), its
  working directory, environment, arguments and process group (so a Ctrl-C or a `kill` of the group reaches the
  stage), re-imports the repo's own code (`safeclip`, `stages`) from disk and runs the stage; the launcher waits
  and exits as the stage did (its exit code, or the same signal). A stage that loses its launcher (killed)
  kills itself.

Only third-party modules stay warm: the repo's code is imported fresh in each child, so an edit between two
stages is seen as in a cold start, and the key of the warm process holds the venv's package folder's mtime, so
an install starts another. The warm process computes nothing before it forks (no OpenMP pool, no torch
thread), and leaves after `IDLE_S` seconds with no stage running (`SAFECLIP_ZYGOTE_IDLE_S` sets another
number). `SAFECLIP_ZYGOTE=0` turns warm starts off; they are off by default on a machine with an NVIDIA GPU
(`enabled`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from pathlib import Path

IDLE_S = 300.0  # a second `dvc repro` within minutes, or the next test's run, finds it warm
STARTING_S = 120.0
# Set anew for each command by what runs the stages (DVC: the stage's name; pytest: the test's): read at import by
# no library, so not part of the key
PER_COMMAND_ENV = ("DVC_STAGE", "PYTEST_CURRENT_TEST")
REPO_PACKAGES = ("safeclip", "stages")
_HEADER = struct.Struct("!Q")


def enabled() -> bool:
    """`SAFECLIP_ZYGOTE` 1 or 0; unset, on unless the machine has an NVIDIA GPU: there a stage's GPU work dwarfs
    its imports, and a library that touched CUDA in the warm process would leave every forked child unable to.
    Linux only (fd passing, SO_PEERCRED; macOS's system libraries are not safe to fork after they load)."""
    if not sys.platform.startswith("linux"):
        return False
    setting = os.environ.get("SAFECLIP_ZYGOTE", "")
    return setting == "1" or (setting != "0" and not os.path.exists("/dev/nvidiactl"))


def socket_path() -> Path | None:
    """Where the warm process for this launcher listens; None when no private folder can be had for it.

    Everything that the warm process's imports may have read is in the key: the interpreter, the venv's package
    folder (its mtime moves with every install), the environment (less `PER_COMMAND_ENV`) and the working
    directory; and the terminal session, so that a stage can join its launcher's process group."""
    env = sorted((k, v) for k, v in os.environ.items() if k not in PER_COMMAND_ENV)
    purelib = sysconfig.get_paths()["purelib"]
    key = json.dumps([sys.executable, sys.version, purelib, os.stat(purelib).st_mtime_ns, os.getcwd(),
                      os.getsid(0), env])
    folder = Path(tempfile.gettempdir()) / f"safeclip-zygote-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # someone else's folder, or one others can write to: no warm start through it
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.sock"
    return path if len(os.fsencode(path)) < 100 else None  # AF_UNIX paths end at ~107 bytes (a long TMPDIR)


# --- the launcher's side --------------------------------------------------------------------------------------

def run(argv: list[str]) -> int | None:
    """Run `python -m safeclip.launch ARGV`'s work in a warm process; its wait status, or None where there is
    none yet (one is started for the next stage) and the caller runs ARGV itself."""
    if not enabled() or (path := socket_path()) is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        start(path)
        return None
    with sock:
        body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                           "pgid": os.getpgrp()}).encode()
        try:
            socket.send_fds(sock, [_HEADER.pack(len(body))], [0, 1, 2])
            sock.sendall(body)
            reply = sock.makefile("rb")
            pid, joined = (int(x) for x in reply.readline().split())
        except (OSError, ValueError):
            return None  # it went away before forking: run here
        forward = [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
        if joined:  # the stage is in this process group: a Ctrl-C reaches it as it reaches this process
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            forward.append(signal.SIGINT)
        for sig in forward:
            signal.signal(sig, lambda signum, _frame, pid=pid: _kill(pid, signum))
        line = reply.readline()
    return int(line) if line.strip() else _lost(pid)


def _lost(pid: int) -> int:
    """The warm process closed the connection without a status (it was killed): the stage's fate is unknown, so
    it is stopped and reported killed."""
    _kill(pid, signal.SIGKILL)
    return signal.SIGKILL  # a wait status: killed by SIGKILL


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def exit_as(status: int) -> None:
    """Leave as the stage left: its exit code, or killed by the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code if code >= 0 else 128 - code)


def start(path: Path) -> None:
    """Start a warm process for PATH in the background, in its own process group, its output in PATH.log,
    unless one is already warming up (PATH.starting, younger than `STARTING_S`): its imports take a few
    seconds, and the stages launched meanwhile run cold rather than start more of them."""
    marker = path.with_suffix(".starting")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - marker.stat().st_mtime > STARTING_S:
                marker.unlink()  # its process died warming up: the next launcher starts another
        return
    with open(path.with_suffix(".log"), "ab") as log:
        subprocess.Popen([sys.executable, "-m", "safeclip.zygote", str(path)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, close_fds=True, process_group=0)


# --- the warm process's side ----------------------------------------------------------------------------------

def warm() -> None:
    """Import every stage module of the working directory (and so what they import), then forget the repo's own
    modules: children import those fresh from disk. A module that fails to import is skipped (its stage will
    say why when it runs)."""
    for stage in sorted(Path("stages").glob("*.py")):
        with contextlib.suppress(Exception):
            importlib.import_module(f"stages.{stage.stem}")
    for name in [m for m in sys.modules if m.split(".")[0] in REPO_PACKAGES]:
        del sys.modules[name]
    gc.collect()
    gc.freeze()  # what is imported stays shared with the children, untouched by their collections


def serve(path: Path, idle_s: float = IDLE_S) -> None:
    print(f"warm process {os.getpid()} for {os.getcwd()}: importing", flush=True)
    warm()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    listener.bind(str(staging))
    listener.listen(8)
    try:
        if not _claim(staging, path):
            return
    finally:
        staging.unlink(missing_ok=True)
        path.with_suffix(".starting").unlink(missing_ok=True)
    ours = path.stat().st_ino
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))  # let running stages finish, then leave
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    accepting = True
    try:
        while children or (accepting and time.monotonic() - last < idle_s):
            for pid in list(children):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = children.pop(pid)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"{status}\n".encode())
                    conn.close()
                    last = time.monotonic()
            accepting = accepting and not stopping and _still_ours(path, ours)
            if not accepting:
                _release(path, ours)  # the next launcher starts another; the stages running here finish here
                time.sleep(0.05)
            elif select.select([listener], [], [], 0.05)[0]:
                conn, _ = listener.accept()
                try:
                    children[_fork(conn, [listener, *children.values()])] = conn
                    last = time.monotonic()
                except (OSError, ValueError):
                    conn.close()
    finally:
        _release(path, ours)
        listener.close()
    path.with_suffix(".log").unlink(missing_ok=True)  # a clean exit: nothing in it to keep


def _still_ours(path: Path, ours: int) -> bool:
    """False once the socket file was removed or replaced (a newer warm process took the key)."""
    try:
        return path.stat().st_ino == ours
    except FileNotFoundError:
        return False


def _release(path: Path, ours: int) -> None:
    if _still_ours(path, ours):
        with contextlib.suppress(OSError):
            path.unlink()


def _claim(staging: Path, path: Path) -> bool:
    """Put the listening socket at PATH unless a live warm process is there: link() never replaces, so of two
    started at once one stays. A socket left by a killed one is replaced."""
    try:
        os.link(staging, path)
        return True
    except FileExistsError:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return False
        except OSError:
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    try:
        os.link(staging, path)
        return True
    except FileExistsError:
        return False


def _fork(conn: socket.socket, inherited: list[socket.socket]) -> int:
    conn.settimeout(10)
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        if uid != os.getuid() or len(fds) != 3 or len(header) != _HEADER.size:
            raise ValueError("not a launcher's request")
        (size,) = _HEADER.unpack(header)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        request = json.loads(body)
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:
            _child(conn, inherited, fds, request)
    finally:
        for fd in fds:
            os.close(fd)
    joined = 1
    try:
        os.setpgid(pid, request["pgid"])  # also done by the child: whichever runs first
    except PermissionError:  # the child has already exec'd (accelerate): it set its group itself
        pass
    except OSError:
        joined = 0
    conn.sendall(f"{pid} {joined}\n".encode())
    return pid


def _child(conn: socket.socket, inherited: list[socket.socket], fds: list[int], request: dict) -> None:
    """The stage process: become what a cold `python -m safeclip.launch ARGV` would be, then run it."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the warm process's own handler is not the stage's
        for other in inherited:  # the listener and other stages' connections
            other.close()
        with contextlib.suppress(OSError):
            os.setpgid(0, request["pgid"])
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())  # as a fresh interpreter decides
        threading.Thread(target=_die_with_launcher, args=(conn,), daemon=True).start()
        importlib.invalidate_caches()
        import random

        random.seed()  # a fresh interpreter's unseeded state, not the warm process's, shared by every child
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        from safeclip.launch import run_here

        run_here(request["argv"])
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - printed as a fresh interpreter prints it, then exit 1
        traceback.print_exc()
    _flush()
    os._exit(code)


def _die_with_launcher(conn: socket.socket) -> None:
    """The launcher sends nothing after its request: a read returns only when it is gone (killed)."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    os.kill(os.getpid(), signal.SIGKILL)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(os.environ.get("SAFECLIP_ZYGOTE_IDLE_S", IDLE_S)))
