"""Zero-shot classification: how much knowledge a model keeps after it is made safe.

Class embeddings are prompt ensembles (the mean of normalised prompt embeddings, renormalised), as in CLIP and
open_clip. The world prompts each class in the image's own caption context; the paper face uses
open_clip's ImageNet templates over any ImageFolder-style set the user has locally.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from safeclip.clip.model import ClipBundle, encode_images, encode_texts
from safeclip.io import InputError
from safeclip.world.catalogue import OBJECT_COLOURS, SAFE_TWIN, TWINNED_SAFE
from safeclip.world.grammar import caption
from safeclip.world.scene import Scene, SceneObject, is_valid

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
# The objects the world's CLIPs see in training: the twinned safe objects and their unsafe stand-ins.
WORLD_OBJECTS: tuple[str, ...] = TWINNED_SAFE + tuple(SAFE_TWIN)


def world_candidates(scene: Scene, kind: str) -> tuple[list[str], list[str]]:
    """(classes, captions): the scene's caption with its object (or colour) replaced by each class.

    The world's template: every world caption names colour, object, position and background, so a class is
    prompted in the image's own context, as "a photo of a {}" carries a photo's context. Classes that would
    break a world rule (an object the colour of its background) are not candidates.
    """
    o = scene.objects[0]
    classes = WORLD_OBJECTS if kind == "object" else tuple(OBJECT_COLOURS)
    out_classes, texts = [], []
    for c in classes:
        obj = SceneObject(c, o.colour, o.position) if kind == "object" else SceneObject(o.name, c, o.position)
        candidate = Scene(scene.background, (obj,))
        if is_valid(candidate):
            out_classes.append(c)
            texts.append(caption(candidate))
    return out_classes, texts


def class_embeddings(bundle: ClipBundle, prompts: dict[str, list[str]], batch_size: int) -> torch.Tensor:
    rows = []
    for texts in prompts.values():
        e = F.normalize(encode_texts(bundle, texts, batch_size), dim=-1).mean(0)
        rows.append(F.normalize(e, dim=-1))
    return torch.stack(rows)


def accuracy(class_emb: torch.Tensor, image_emb: torch.Tensor, labels: Sequence[int]) -> float:
    pred = (F.normalize(image_emb.float(), dim=-1) @ class_emb.T).argmax(1)
    return float((pred == torch.as_tensor(labels)).float().mean()) if len(labels) else 0.0


def world_zeroshot(bundle: ClipBundle, image_emb: torch.Tensor, scenes: Sequence[str], batch_size: int
                   ) -> dict[str, float]:
    """Object (16-way) and colour (7-way) accuracy (%) on the safe test images, whose scenes the world knows."""
    parsed = [Scene.from_json(s) for s in scenes]
    images = F.normalize(image_emb.float(), dim=-1)
    out = {}
    for kind in ("object", "colour"):
        candidates = [world_candidates(s, kind) for s in parsed]
        texts = sorted({t for _, ts in candidates for t in ts})
        row = {t: i for i, t in enumerate(texts)}
        text_emb = F.normalize(encode_texts(bundle, texts, batch_size), dim=-1)
        correct = 0
        for img, scene, (classes, ts) in zip(images, parsed, candidates, strict=True):
            truth = scene.objects[0].name if kind == "object" else scene.objects[0].colour
            scores = text_emb[[row[t] for t in ts]] @ img
            correct += classes[int(scores.argmax())] == truth
        out[f"zeroshot.{kind}"] = 100 * correct / max(1, len(parsed))
    out["zeroshot.mean"] = (out["zeroshot.object"] + out["zeroshot.colour"]) / 2
    return out


def image_folder(path: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of an ImageFolder layout: one sub-folder per class."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: zero-shot set folder does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"{root}: no class sub-folders (expected ImageFolder layout: {root}/<class>/<image>)")
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        raise InputError(f"{root}: no images found under the class folders")
    return files, labels, [c.replace("_", " ") for c in classes]


def folder_zeroshot(bundle: ClipBundle, path: str, templates: str, batch_size: int) -> float:
    """Top-1 accuracy (%) with open_clip's ImageNet template ensemble."""
    from open_clip import zero_shot_metadata as meta

    tmpl = meta.OPENAI_IMAGENET_TEMPLATES if templates == "openai" else meta.SIMPLE_IMAGENET_TEMPLATES
    files, labels, classes = image_folder(path)
    prompts = {c: [t(c) for t in tmpl] for c in classes}
    images = [{"bytes": None, "path": str(f)} for f in files]
    image_emb = encode_images(bundle, images, batch_size, where=path)
    return 100 * accuracy(class_embeddings(bundle, prompts, batch_size), image_emb, labels)
