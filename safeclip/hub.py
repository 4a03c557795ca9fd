"""Loading weights and datasets by hub id or local path: safetensors only, no remote code, fail fast offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safeclip.io import InputError

POINTER = "resolved.json"  # a model folder that says where the weights are, instead of a multi-GB copy
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model_dir(source: str, revision: str | None = None, allow_pickle: bool = False) -> Path:
    """A local folder holding the model: the path itself, or the hub snapshot (downloaded unless offline).

    Refuses folders whose weights are pickles only: unpickling runs arbitrary code.
    """
    if is_local(source):
        path = Path(source).expanduser()
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
                f"machine with access (`hf download {source}`) and copy the cache, or set the param to a "
                f"local folder holding the model") from e
        except Exception as e:
            raise InputError(f"{source}: could not be resolved as a local path or a hub id ({e})") from e
    check_safe_weights(path, allow_pickle)
    return path


def check_safe_weights(path: Path, allow_pickle: bool = False) -> None:
    files = [p for p in path.rglob("*") if p.is_file()]
    has_safetensors = any(p.suffix == ".safetensors" for p in files)
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not has_safetensors and not allow_pickle:
        raise InputError(f"{path}: holds only pickle weights ({pickles[0].name}); they can run code when loaded. "
                         "Convert them to safetensors, or set allow_pickle: true for a file you trust")


def load_text_dataset(source: str, revision: str | None = None):
    """A DatasetDict from a hub id, a local folder of parquet/csv/json files, or a single such file."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_file():
            fmt = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(path.suffix)
            if fmt is None:
                raise InputError(f"{path}: unsupported file type (use parquet, csv, json or jsonl)")
            return datasets.load_dataset(fmt, data_files={"test": str(path)})
        if path.is_dir():
            return datasets.load_dataset(str(path))
        return datasets.load_dataset(source, revision=revision)
    except InputError:
        raise
    except Exception as e:
        hint = (" It is not in the local cache and HF_HUB_OFFLINE=1: download it where there is access and copy "
                "the cache, or point the param at a local folder.") if offline() and not path.exists() else ""
        raise InputError(f"{source}: could not load the dataset ({type(e).__name__}: {e}).{hint}") from e


def write_pointer(out_dir: Path, source: str, revision: str | None, resolved: Path) -> None:
    (out_dir / POINTER).write_text(json.dumps({"source": source, "revision": revision,
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
