"""Atomic writes, Parquet with schemas validated on read, and the metrics writer."""

import json
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from safeclip.data.schemas import PAIRS
from safeclip.io import (
    InputError,
    atomic_dir,
    atomic_path,
    read_parquet,
    write_metrics,
    write_parquet,
    write_plot_csv,
    write_text,
)

ROWS = [
    {"id": "a", "split": "train", "safe": "a cat", "unsafe": "a dead cat", "tag": "harm",
     "source_file": "pairs.jsonl", "source_line": 1},
    {"id": "b", "split": "val", "safe": "a dog", "unsafe": "a bloody dog", "tag": "blood",
     "source_file": "pairs.jsonl", "source_line": 2},
    {"id": "c", "split": "train", "safe": "a van", "unsafe": "a burning van", "tag": "vandalism",
     "source_file": "pairs.jsonl", "source_line": 3},
]
NULLABLE_PAIRS = pa.schema([pa.field(f.name, f.type) for f in PAIRS])


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- atomic writes --------------------------------------------------------------------------------------------


def test_atomic_path_success(tmp_path, umask_022):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("hello")
        assert not target.exists()
    assert target.read_text() == "hello"
    assert mode(target) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_respects_a_strict_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x.txt") == 0o600


def test_atomic_dir_success_replaces_the_whole_folder(tmp_path, umask_022):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("stale")
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and list(tmp.iterdir()) == []
        (tmp / "weights.safetensors").write_text("w")
    assert sorted(p.name for p in target.iterdir()) == ["weights.safetensors"]
    assert mode(target) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or .old folder left


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "model"
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "weights.safetensors").write_text("half")
        raise ValueError
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_dir_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "new.bin").write_text("new")
        raise ValueError
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# --- parquet --------------------------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path, umask_022):
    path = tmp_path / "pairs.parquet"
    write_parquet(path, ROWS, PAIRS)
    table = read_parquet(path, PAIRS)
    assert table.schema.equals(PAIRS)
    assert table.to_pylist() == ROWS
    assert mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.parquet"]


def test_parquet_round_trip_from_table_with_extra_column_and_wider_int(tmp_path):
    table = pa.Table.from_pylist(ROWS).append_column("extra", pa.array([1, 2, 3]))
    assert table.schema.field("source_line").type == pa.int64()
    pq.write_table(table, tmp_path / "p.parquet")
    out = read_parquet(tmp_path / "p.parquet", PAIRS)
    assert out.column_names == [f.name for f in PAIRS]
    assert out.to_pylist() == ROWS


def test_write_parquet_refuses_nulls_in_required_fields(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[1]["tag"] = None
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        write_parquet(tmp_path / "p.parquet", rows, PAIRS)
    assert list(tmp_path.iterdir()) == []


def test_read_parquet_missing_file(tmp_path):
    path = tmp_path / "nope.parquet"
    with pytest.raises(InputError, match="file does not exist") as e:
        read_parquet(path, PAIRS)
    assert str(path) in str(e.value)


def test_read_parquet_missing_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=NULLABLE_PAIRS).drop_columns(["tag"]), path)
    with pytest.raises(InputError) as e:
        read_parquet(path, PAIRS)
    assert str(e.value).startswith(f"{path}: column 'tag' is missing")


def test_read_parquet_null_in_required_field(tmp_path):
    path = tmp_path / "p.parquet"
    rows = [dict(r) for r in ROWS]
    rows[2]["unsafe"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=NULLABLE_PAIRS), path)
    with pytest.raises(InputError) as e:
        read_parquet(path, PAIRS)
    assert str(e.value) == f"{path}: row 2: field 'unsafe' is null"


def test_read_parquet_null_found_across_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    rows = [dict(r) for r in ROWS] * 2
    rows[4] = {**rows[4], "safe": None}
    pq.write_table(pa.Table.from_pylist(rows, schema=NULLABLE_PAIRS), path, row_group_size=2)
    with pytest.raises(InputError, match=r": row 4: field 'safe' is null"):
        read_parquet(path, PAIRS)


def test_read_parquet_wrong_type(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "source_line": "line one"} for r in ROWS]), path)
    with pytest.raises(InputError) as e:
        read_parquet(path, PAIRS)
    assert str(e.value) == f"{path}: column 'source_line' has type string, expected int32"


@pytest.mark.parametrize("cut", ["truncated", "empty", "garbage"])
def test_read_parquet_corrupt_file(tmp_path, cut):
    path = tmp_path / "p.parquet"
    write_parquet(path, ROWS, PAIRS)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not parquet at all"}[cut])
    with pytest.raises(InputError) as e:
        read_parquet(path, PAIRS)
    assert str(e.value).startswith(f"{path}: not a readable Parquet file")


# --- metrics and plots ----------------------------------------------------------------------------------------


def test_write_metrics(tmp_path):
    path = tmp_path / "metrics" / "m.json"
    write_metrics(path, {"loss": float("nan"), "acc": 2 / 3, "steps": 7, "inf": float("-inf"), "name": "sft",
                         "none": None, "whole": 2.0, "tiny": 1.23456789e-7})
    text = path.read_text()
    assert json.loads(text) == {"acc": 0.666667, "inf": None, "loss": None, "name": "sft", "none": None,
                                "steps": 7, "tiny": 0.0, "whole": 2.0}
    assert "NaN" not in text and "Infinity" not in text
    assert text.endswith("}\n") and text.index('"acc"') < text.index('"loss"')  # sorted keys


def test_write_plot_csv(tmp_path):
    path = tmp_path / "p.csv"
    write_plot_csv(path, [{"loss": 0.123456789, "step": 1}, {"step": 2, "acc": 0.5}])
    assert path.read_text() == "step,acc,loss\n1,,0.123457\n2,0.5,\n"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temp_files_are_cleared_by_the_next_write(tmp_path):
    """A kill mid-write leaves `.<name>.<pid>.*.tmp` in the folder (a dependency of another stage): the next
    atomic write of the same path removes it, but never a live process's temp."""
    import os

    dead, alive = _dead_pid(), os.getppid()
    stale_file = tmp_path / f".m.json.{dead}.abc.tmp"
    stale_dir = tmp_path / f".m.json.{dead}.def.tmp"
    live = tmp_path / f".m.json.{alive}.ghi.tmp"
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "x").write_text("half")
    live.write_text("being written")
    write_metrics(tmp_path / "m.json", {"a": 1})
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.json", live.name])


def test_atomic_dir_clears_a_killed_swaps_old_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (tmp_path / ".model.old").mkdir()  # killed after the new folder went in, before the old one was removed
    with atomic_dir(out) as tmp:
        (tmp / "w").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
