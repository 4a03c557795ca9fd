"""Model pointers record the hub commit they resolved to."""

import json
from pathlib import Path

from safeclip.hub import POINTER, resolved_commit, write_pointer


def test_pointer_records_the_snapshot_commit(tmp_path: Path) -> None:
    snap = tmp_path / "hub/models--org--m/snapshots/0123abcd"
    write_pointer(tmp_path, "org/m", None, snap)
    info = json.loads((tmp_path / POINTER).read_text())
    assert info["resolved_commit"] == "0123abcd" and info["resolved_path"] == str(snap)
    assert resolved_commit(Path("data/models/llm")) is None
