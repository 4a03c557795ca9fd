"""Resumable training: checkpoints live in a `persist: true` folder and are reused only under the same params.

DVC 3 has no checkpoint outputs, so each long stage keeps its own; a fingerprint of everything that shapes
the run (params, inputs, and the code of the running stage) is stored beside them, and a mismatch means
starting over, said out loud.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path

from safeclip.io import write_text

FINGERPRINT = "fingerprint.json"


def code_digest(module: str, root: Path | None = None) -> str:
    """Hash of a module's import closure inside the repo (its file and every repo module it imports)."""
    from safeclip.closure import ROOT, closure

    root = root or ROOT
    return _digest((str(f.relative_to(root)), f) for f in sorted(closure([module], root)))


def _digest(named_files) -> str:
    """sha256 over (name, bytes) of each file, in the given order: the one hash behind code and input digests."""
    h = hashlib.sha256()
    for name, f in named_files:
        h.update(name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def running_code_digest() -> str:
    """`code_digest` of the running stage, so that a changed training loop starts over instead of resuming
    from state an older loop wrote. Empty when the process is not a `python -m stages.<name>` run (tests
    calling a stage's main() in-process)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    return code_digest(name) if name.startswith("stages.") else ""


def fingerprint(*parts) -> str:
    """What a checkpoint may be resumed under: the parts (params, input digests) and the stage's code."""
    blob = json.dumps([running_code_digest(), *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: str | Path) -> str:
    """Content hash of a file or of every file in a folder (names and bytes)."""
    path = Path(path)
    if path.is_dir():
        return _digest((str(p.relative_to(path)), p) for p in sorted(p for p in path.rglob("*") if p.is_file()))
    return _digest([(path.name, path)])


def prepare_checkpoint_dir(ckpt_dir: str | Path, fp: str, log: logging.Logger, is_main: bool = True) -> bool:
    """True when `ckpt_dir` holds checkpoints of this exact run (resume); otherwise empty it and say why.

    Call on every process; only the main one touches the folder, so callers must sync after it.
    """
    ckpt_dir = Path(ckpt_dir)
    stored = ckpt_dir / FINGERPRINT
    try:
        previous = json.loads(stored.read_text()).get("fingerprint") if stored.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        previous = None
        log.warning("checkpoint fingerprint %s is unreadable: starting over", stored)
    if previous == fp:
        return True
    if previous is not None:
        log.warning("checkpoint in %s was made under different params or inputs: not resuming, starting over",
                    ckpt_dir)
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        log.warning("checkpoint folder %s has no fingerprint: starting over", ckpt_dir)
    if is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text(stored, json.dumps({"fingerprint": fp}) + "\n")
    return False


def _step(ckpt: Path) -> int:
    return int(ckpt.name.rsplit("-", 1)[1])


def is_complete(ckpt: Path) -> bool:
    """A transformers checkpoint folder is complete once its trainer_state.json (written last) parses."""
    try:
        return "global_step" in json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _trainer_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.exists():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                  key=_step)


def drop_incomplete_checkpoints(ckpt_dir: str | Path, log: logging.Logger) -> None:
    """Delete checkpoint-N folders a kill left half-written (no readable trainer_state.json), saying so.

    transformers picks the highest-numbered folder and would crash on (or resume from) a partial one.
    """
    for ckpt in _trainer_checkpoints(Path(ckpt_dir)):
        if not is_complete(ckpt):
            log.warning("%s is incomplete (the run was killed while saving it): deleting it", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The highest-numbered complete checkpoint-N folder, or None."""
    done = [p for p in _trainer_checkpoints(Path(ckpt_dir)) if is_complete(p)]
    return str(done[-1]) if done else None
