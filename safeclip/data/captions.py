"""Safe image-caption sources: the synthetic world, a local COCO folder, or the released ViSU-Text."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from safeclip.data.schemas import SPLITS
from safeclip.io import InputError
from safeclip.params import CocoCaptions, VisuHfCaptions, World, WorldCaptions
from safeclip.world.catalogue import TWINNED_SAFE
from safeclip.world.grammar import caption
from safeclip.world.render import RenderConfig, render, to_png
from safeclip.world.scene import Scene, enumerate_scenes, sample_scene


def render_config(world: World) -> RenderConfig:
    return RenderConfig(image_size=world.image_size, glyph_fraction=world.glyph_fraction,
                        size_jitter=world.size_jitter, position_jitter=world.position_jitter,
                        colour_jitter=world.colour_jitter, noise_std=world.noise_std)


def stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha1(":".join(map(str, parts)).encode()).digest()[:4], "little")


def world_scenes(counts: dict[str, int], seed: int, max_objects: int,
                 positions: Sequence[str]) -> dict[str, list[Scene]]:
    """Unique safe scenes per split, disjoint across splits (test scenes are held out of all training).

    Only safe objects that have an unsafe twin are used, so each caption has one well-defined unsafe version.
    """
    total = sum(counts.values())
    rng = np.random.default_rng(seed)
    if max_objects == 1:
        pool = enumerate_scenes(TWINNED_SAFE, positions)
        if total > len(pool):
            raise ValueError(f"captions.world: {total} scenes asked (n_train + n_val + n_test), the one-object world "
                             f"at {len(positions)} positions has {len(pool)}")
        picked = [pool[i] for i in rng.permutation(len(pool))[:total]]
    else:
        seen: set[Scene] = set()
        picked = []
        while len(picked) < total:
            s = sample_scene(rng, TWINNED_SAFE, max_objects, positions)
            if s not in seen:
                seen.add(s)
                picked.append(s)
    out, start = {}, 0
    for split in ("test", "val", "train"):  # test first: its size never depends on the others
        out[split] = picked[start:start + counts[split]]
        start += counts[split]
    return out


def world_rows(cfg: WorldCaptions, world: World, seed: int, scale: float) -> Iterator[dict]:
    from safeclip.runtime import scaled

    counts = {"train": scaled(cfg.n_train, scale, 8), "val": scaled(cfg.n_val, scale, 8),
              "test": scaled(cfg.n_test, scale, 8)}
    rcfg = render_config(world)
    for split, scenes in world_scenes(counts, seed, world.max_objects, world.positions).items():
        for i, scene in enumerate(scenes):
            rseed = stable_seed(seed, split, i)
            yield {"id": f"world-{split}-{i:05d}", "split": split, "caption": caption(scene),
                   "image": {"bytes": to_png(render(scene, rseed, rcfg)), "path": None}, "source": "world",
                   "scene": scene.to_json(), "seed": rseed, "nsfw": None, "tag": None}


# Modes whose 8-bit conversion to RGB keeps the picture. 16/32-bit and float images (I;16, I, F: scans, depth
# maps) are clipped to white or black by PIL's convert("RGB"), so they are refused instead of silently ruined.
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def check_image(path: Path, where: str) -> None:
    """Fail with the file and field when an image is missing, empty, undecodable or of an unusable mode.

    Any size is fine (the CLIP image processor resizes and crops), and so is any 8-bit mode (converted to RGB).
    """
    if not path.exists():
        raise InputError(f"{where}: image: file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{where}: image: {path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{where}: image: file {path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: verify() misses truncated JPEGs
            mode = im.mode
    except Exception as e:
        raise InputError(f"{where}: image: file {path} is not a readable image ({e})") from e
    if mode not in EIGHT_BIT_MODES:
        raise InputError(f"{where}: image: file {path} has mode {mode} (more than 8 bits per channel), which "
                         "would be clipped when converted to RGB; convert it to an 8-bit RGB image")


def _load_json(path: Path) -> dict:
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    if not path.is_file():
        raise InputError(f"{path}: is a folder, not a JSON file")
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path}: file is empty")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from e


def read_coco(annotations: Path, images: Path, captions_per_image: int, limit: int | None,
              images_param: str = "captions.coco.images_*") -> list[tuple[str, str]]:
    """(image path, caption) from a COCO captions JSON, validated entry by entry."""
    data = _load_json(annotations)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError(f"{annotations}: expected a COCO captions object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise InputError(f"{annotations}: {key}: must be a list, got {type(data[key]).__name__}")
    if not images.is_dir():
        raise InputError(f"{images}: image folder does not exist ({images_param})")
    files: dict[int, str] = {}
    for i, im in enumerate(data["images"]):
        for key, typ in (("id", int), ("file_name", str)):
            if not isinstance(im, dict) or key not in im:
                raise InputError(f"{annotations}: images[{i}]: {key}: missing")
            if not isinstance(im[key], typ) or isinstance(im[key], bool):
                raise InputError(f"{annotations}: images[{i}]: {key}: must be {typ.__name__}, got "
                                 f"{type(im[key]).__name__}")
        if im["id"] in files:
            raise InputError(f"{annotations}: images[{i}]: id: duplicate image id {im['id']}")
        files[im["id"]] = im["file_name"]
    per_image: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        for key, typ in (("image_id", int), ("caption", str)):
            if not isinstance(ann, dict) or key not in ann:
                raise InputError(f"{annotations}: annotations[{i}]: {key}: missing")
            if not isinstance(ann[key], typ) or isinstance(ann[key], bool):
                raise InputError(f"{annotations}: annotations[{i}]: {key}: must be {typ.__name__}, got "
                                 f"{type(ann[key]).__name__}")
        if ann["image_id"] not in files:
            raise InputError(f"{annotations}: annotations[{i}]: image_id: {ann['image_id']} is not in images")
        if not ann["caption"].strip():
            raise InputError(f"{annotations}: annotations[{i}]: caption: empty")
        per_image.setdefault(ann["image_id"], []).append(" ".join(ann["caption"].split()))
    out = []
    for n, image_id in enumerate(sorted(per_image)):
        if limit is not None and n >= limit:
            break
        path = images / files[image_id]
        check_image(path, f"{annotations}: image id {image_id}")
        out += [(str(path), c) for c in per_image[image_id][:captions_per_image]]
    if not out:
        raise InputError(f"{annotations}: no captions")
    return out


def coco_rows(cfg: CocoCaptions, seed: int) -> Iterator[dict]:
    train = read_coco(Path(cfg.annotations_train), Path(cfg.images_train), cfg.captions_per_image,
                      cfg.max_images_per_split, "captions.coco.images_train")
    val_all = read_coco(Path(cfg.annotations_val), Path(cfg.images_val), cfg.captions_per_image, None,
                        "captions.coco.images_val")
    images = sorted({p for p, _ in val_all}, key=lambda p: stable_seed(seed, p))
    n_test = round(len(images) * cfg.test_fraction)
    test_images = set(images[:n_test])
    limit = cfg.max_images_per_split
    splits = {"train": train, "val": [r for r in val_all if r[0] not in test_images],
              "test": [r for r in val_all if r[0] in test_images]}
    for split in SPLITS:
        rows = splits[split]
        if limit is not None:
            keep = set(sorted({p for p, _ in rows})[:limit])
            rows = [r for r in rows if r[0] in keep]
        for i, (path, text) in enumerate(rows):
            yield {"id": f"coco-{split}-{i:06d}", "split": split, "caption": text,
                   "image": {"bytes": None, "path": path}, "source": "coco", "scene": None, "seed": None,
                   "nsfw": None, "tag": None}


VISU_SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def visu_hf_rows(cfg: VisuHfCaptions) -> Iterator[dict]:
    """ViSU-Text rows (safe, nsfw, tag[, coco_id]) from a hub id or a local file/folder."""
    from safeclip.hub import load_text_dataset

    dataset = load_text_dataset(cfg.dataset, cfg.revision, param="captions.visu_hf.dataset")
    if not any(len(ds) for ds in dataset.values()):
        raise InputError(f"{cfg.dataset}: no rows (captions.visu_hf.dataset)")
    for hf_split, ds in dataset.items():
        split = VISU_SPLITS.get(hf_split)
        if split is None:
            raise InputError(f"{cfg.dataset}: unknown split {hf_split!r} (expected train/validation/test)")
        for col in ("safe", "nsfw", "tag"):
            if col not in ds.column_names:
                raise InputError(f"{cfg.dataset}: split {hf_split}: column {col!r} is missing "
                                 f"(has {ds.column_names})")
        for i, row in enumerate(ds):
            if cfg.max_rows_per_split is not None and i >= cfg.max_rows_per_split:
                break
            for col in ("safe", "nsfw", "tag"):
                if not isinstance(row[col], str) or not row[col].strip():
                    raise InputError(f"{cfg.dataset}: split {hf_split}: row {i}: {col}: empty or not a string "
                                     f"(got {row[col]!r})")
            image = None
            if cfg.coco_images and row.get("coco_id") is not None:
                coco_id = row["coco_id"]
                if isinstance(coco_id, str) and coco_id.strip().isdigit():
                    coco_id = int(coco_id)
                if isinstance(coco_id, float) and coco_id.is_integer():
                    coco_id = int(coco_id)
                if not isinstance(coco_id, int) or isinstance(coco_id, bool) or coco_id < 0:
                    raise InputError(f"{cfg.dataset}: split {hf_split}: row {i}: coco_id: must be a COCO image id "
                                     f"(a non-negative integer), got {coco_id!r}")
                path = Path(cfg.coco_images) / f"{coco_id:012d}.jpg"
                check_image(path, f"{cfg.dataset}: split {hf_split}: row {i}")
                image = {"bytes": None, "path": str(path)}
            yield {"id": f"visu-{split}-{i:06d}", "split": split, "caption": row["safe"].strip(), "image": image,
                   "source": "visu-hf", "scene": None, "seed": None, "nsfw": row["nsfw"].strip(), "tag": row["tag"]}
