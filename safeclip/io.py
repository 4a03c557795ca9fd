"""Atomic writes, Parquet with explicit schemas validated on read, metrics and plots writers.

DVC caches whatever sits at an output path when a stage ends. Writing to a temporary sibling and renaming
means a killed or failing stage never leaves a half-written file that DVC could cache.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class InputError(Exception):
    """A user-supplied input is malformed; the message names the file, row/line and field."""


def _pid_alive(pid: int) -> bool:
    """Signal 0 only asks whether the process exists; PermissionError means it does, as someone else's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def clear_stale_temps(path: Path) -> None:
    """Remove what a killed atomic write of `path` left beside it (`.<name>.<pid>.*.tmp`, `.<name>.old`).

    Left there, such a file would change the hash of the folder it sits in (`metrics/retrieval`, a stage's
    dependency). Only temps whose writing process is gone are removed, so two live writers never collide."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and path.exists():  # the swap finished (the new folder is in place): the old one is garbage
        shutil.rmtree(old, ignore_errors=True)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces `path` as a whole only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, float | int | str | None]) -> None:
    """Flat JSON with stable dotted names, so `dvc metrics diff` lines up across experiments."""
    flat = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):  # numpy and torch scalars
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        flat[k] = round(v, 6) if isinstance(v, float) else v
    write_json(path, flat)


def write_plot_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, float | int]], x: str = "step") -> None:
    """CSV with the x column (`step` for training curves) first, as DVC plots read it."""
    cols = [x] + sorted({k for r in rows for k in r} - {x})
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r.get(c), float)
                              else str(r[c]) for c in cols))
    write_text(path, "\n".join(lines) + "\n")


def write_parquet(path: str | os.PathLike, rows: Sequence[Mapping] | pa.Table, schema: pa.Schema) -> None:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
    table = table.cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    """Read and check against `schema`: missing columns, wrong types and nulls in required fields."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    for field in schema:
        if field.name not in table.column_names:
            raise InputError(f"{path}: column {field.name!r} is missing (has {table.column_names})")
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InputError(f"{path}: column {field.name!r} has type {col.type}, expected {field.type}") from e
            table = table.set_column(table.column_names.index(field.name), field.name, col)
        if not field.nullable and col.null_count:
            row = next(i for i, v in enumerate(col.is_null().to_pylist()) if v)
            raise InputError(f"{path}: row {row}: field {field.name!r} is null")
    return table.select([f.name for f in schema]).cast(schema)
