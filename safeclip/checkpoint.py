"""Resumable training: checkpoints live in a `persist: true` folder and are reused only under the same params.

DVC 3 has no checkpoint outputs, so each long stage keeps its own; a fingerprint of everything that shapes
the run (params, inputs) is stored beside them, and a mismatch means starting over, said out loud.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from safeclip.io import write_text

FINGERPRINT = "fingerprint.json"


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_digest(path: str | Path) -> str:
    """Content hash of a file or of every file in a folder (names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


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


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(ckpt_dir)
    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
