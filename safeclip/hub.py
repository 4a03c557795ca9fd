"""Loading weights and datasets by hub id or local path: safetensors only, no remote code, fail fast offline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safeclip.io import InputError

POINTER = "resolved.json"  # a model folder that says where the weights are, instead of a multi-GB copy
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def looks_like_path(source: str) -> bool:
    """A source the user meant as a local path (a hub id is `name` or `org/name`, never more)."""
    return (source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source
            or Path(source).suffix.lower() in {".parquet", ".csv", ".json", ".jsonl", ".safetensors"})


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


# Keys transformers copies from the loading call and environment into a tokenizer's saved config: a model folder
# saved by a stage must not depend on whether HF_HUB_OFFLINE was set when its input was loaded
_LOAD_ENVIRONMENT_KEYS = ("local_files_only",)


def load_tokenizer(path: str | Path):
    """AutoTokenizer from a local folder, never remote code, without the loading environment in what it saves."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    for key in _LOAD_ENVIRONMENT_KEYS:
        tok.init_kwargs.pop(key, None)
    return tok


def resolve_model_dir(source: str, revision: str | None = None, allow_pickle: bool = False, *,
                      param: str | None = None) -> Path:
    """A local folder holding the model: the path itself, or the hub snapshot (downloaded unless offline).

    Refuses folders whose weights are pickles only: unpickling runs arbitrary code. `param` (e.g.
    "base_clip.source") is named in the messages, so the user knows what to change.
    """
    where = f"set {param}" if param else "set the param"
    if is_local(source):
        path = Path(source).expanduser()
    elif looks_like_path(source):
        raise InputError(f"{source}: model folder does not exist ({where} to a folder holding the model)")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            path = Path(snapshot_download(source, revision=revision, local_files_only=offline(),
                                          allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                          "tokenizer*", "*.jinja"]))
        except LocalEntryNotFoundError as e:
            raise InputError(
                f"{source}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1. Download it on a "
                f"machine with access (`hf download {source}`) and copy the cache (HF_HOME), or {where} to a "
                f"local folder holding the model") from e
        except Exception as e:
            raise InputError(f"{source}: could not be resolved as a local path or a hub id ({e})") from e
    check_safe_weights(path, allow_pickle, param)
    return path


def check_safe_weights(path: Path, allow_pickle: bool = False, param: str | None = None) -> None:
    files = [p for p in path.rglob("*") if p.is_file()]
    has_safetensors = any(p.suffix == ".safetensors" for p in files)
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not has_safetensors and not allow_pickle:
        raise InputError(f"{path}: holds only pickle weights ({', '.join(p.name for p in pickles[:3])}); loading a "
                         "pickle can run arbitrary code, so it is refused. Convert the weights to safetensors "
                         f"(see README, Robustness) and point {param or 'the param'} at that folder")


DATA_SUFFIXES = (".parquet", ".csv", ".jsonl")  # not .json: folders also hold metadata JSON
# What `datasets` reads as a split name in a local folder's file and folder names
SPLIT_WORDS = {"train", "training", "validation", "valid", "val", "dev", "eval", "test", "testing"}


def _unsplit_files(folder: Path) -> list[Path]:
    """Data files `datasets` would silently skip: those naming no split, in a folder where others do."""
    files = [p for p in sorted(folder.rglob("*")) if p.suffix in DATA_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    named = {p: bool(SPLIT_WORDS & set(re.split(r"[^a-z]+", str(p.relative_to(folder)).lower()))) for p in files}
    return [p for p, ok in named.items() if not ok] if any(named.values()) else []


def _check_utf8(file: Path) -> None:
    """Text data files must be UTF-8; `datasets` would only say "Invalid UTF8 sequence", with no line."""
    if file.suffix not in (".csv", ".json", ".jsonl"):
        return
    data = file.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{file}: line {line}: not valid UTF-8 (byte {e.start}); save it as UTF-8") from e


def _root_cause(e: BaseException) -> BaseException:
    """`datasets` wraps the reader's error (e.g. a UnicodeDecodeError) in a DatasetGenerationError."""
    seen = {id(e)}
    while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    return e


def load_text_dataset(source: str, revision: str | None = None, param: str | None = None):
    """A DatasetDict from a hub id, a local folder of parquet/csv/json files, or a single such file."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_file():
            fmt = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(path.suffix)
            if fmt is None:
                raise InputError(f"{path}: unsupported file type (use parquet, csv, json or jsonl)")
            if path.stat().st_size == 0:
                raise InputError(f"{path}: file is empty")
            _check_utf8(path)
            return datasets.load_dataset(fmt, data_files={"test": str(path)})
        if path.is_dir():
            skipped = _unsplit_files(path)
            if skipped:
                raise InputError(f"{skipped[0]}: its name says no split (train, validation or test), so it would be "
                                 "left out; rename it or move it out of the folder")
            for file in sorted(path.rglob("*")):
                if file.is_file():
                    _check_utf8(file)
            return datasets.load_dataset(str(path))
        if looks_like_path(source):
            raise InputError(f"{source}: file or folder does not exist")
        return datasets.load_dataset(source, revision=revision)
    except InputError:
        raise
    except Exception as e:
        cause = _root_cause(e)
        if isinstance(cause, UnicodeDecodeError):
            raise InputError(f"{source}: not valid UTF-8 (byte {cause.start} of a data file); save it as "
                             "UTF-8") from e
        if "corresponds to no data" in str(cause):
            raise InputError(f"{source}: no rows") from e
        hint = (" It is not in the local cache and HF_HUB_OFFLINE=1: download it where there is access and copy "
                f"the cache (HF_HOME), or point {param or 'the param'} at a local folder."
                ) if offline() and not path.exists() else ""
        what = f"{type(e).__name__}: {e}" + (f"; {type(cause).__name__}: {cause}" if cause is not e else "")
        raise InputError(f"{source}: could not load the dataset ({what}).{hint}") from e


def resolved_commit(resolved: Path) -> str | None:
    """The hub commit a snapshot folder belongs to (`.../snapshots/<commit>`), None for a local folder."""
    parts = Path(resolved).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def write_pointer(out_dir: Path, source: str, revision: str | None, resolved: Path) -> None:
    """The pointer records the commit the hub id resolved to, so a new revision in the cache gives another
    pointer (and reruns what depends on it) once the stage reruns."""
    (out_dir / POINTER).write_text(json.dumps({"source": source, "revision": revision,
                                               "resolved_commit": resolved_commit(resolved),
                                               "resolved_path": str(resolved)}, indent=2) + "\n")


def model_dir(path: str | Path, allow_pickle: bool = False) -> Path:
    """The folder with weights for `path`: itself, or what its pointer file resolves to."""
    path = Path(path)
    pointer = path / POINTER
    if pointer.exists():
        info = json.loads(pointer.read_text())
        return resolve_model_dir(info["source"], info.get("revision"), allow_pickle)
    if not path.exists():
        raise InputError(f"{path}: model folder does not exist")
    return resolve_model_dir(str(path), allow_pickle=allow_pickle)
