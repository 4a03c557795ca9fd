"""Test-split embeddings of one model, computed once and stored for every evaluation that needs them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from safeclip.clip.model import ClipBundle, encode_images, encode_texts
from safeclip.data.schemas import VISU
from safeclip.io import InputError, atomic_path, read_parquet
from safeclip.methods.registry import BASE

KEYS = ("text_safe", "text_unsafe", "image_safe", "image_unsafe")


def model_path(name: str) -> Path:
    return Path("models/base_clip") if name == BASE else Path("models/safe") / name


def embeddings_path(name: str) -> Path:
    return Path("data/embeddings") / f"{name}.safetensors"


def embedded_rows(path: str) -> list[dict]:
    """The rows of a split that every model is embedded on, in file order: those with an unsafe image."""
    rows = [r for r in read_parquet(path, VISU).to_pylist() if r["nsfw_image"] is not None]
    if not rows:
        raise InputError(f"{path}: no row has an unsafe image; nothing to evaluate")
    return rows


def embed_split(bundle: ClipBundle, path: str, batch_size: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Projected embeddings of t, t*, v, v* for the rows that have an unsafe image, and row metadata."""
    rows = embedded_rows(path)
    emb = {
        "text_safe": encode_texts(bundle, [r["safe"] for r in rows], batch_size),
        "text_unsafe": encode_texts(bundle, [r["nsfw"] for r in rows], batch_size),
        "image_safe": encode_images(bundle, [r["image"] for r in rows], batch_size, f"{path}: image"),
        "image_unsafe": encode_images(bundle, [r["nsfw_image"] for r in rows], batch_size, f"{path}: nsfw_image"),
    }
    meta = {"ids": [r["id"] for r in rows], "tags": [r["tag"] for r in rows],
            "scenes": [r["scene"] for r in rows]}
    return emb, meta


def save_embeddings(path: Path, emb: dict[str, torch.Tensor], meta: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in emb.items()}, str(tmp), metadata={"meta": json.dumps(meta)})


def load_embeddings(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.exists():
        raise InputError(f"{path}: embeddings file does not exist (run its embed stage)")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    emb = load_file(str(path))
    missing = [k for k in KEYS if k not in emb]
    if missing:
        raise InputError(f"{path}: missing tensors {missing}")
    return emb, meta
