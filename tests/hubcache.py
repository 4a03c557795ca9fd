"""Filing a model folder in an offline Hugging Face cache under a hub id, as `hf download` would leave it, so
that code resolving hub ids (safeclip.hub) finds it with HF_HUB_OFFLINE=1 and no network."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def file_in_cache(hub_cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Copy `folder` to `<hub_cache>/models--org--name/snapshots/<commit>` with refs/main -> commit."""
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs/main").write_text(commit)
    return snap
