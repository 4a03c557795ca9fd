"""ViSU quadruples (t, v, t*, v*) ready for a CLIP: tokenised once, images decoded per batch or cached.

Small datasets (the world's: ~50 MB of pixels) are decoded once and kept as tensors; large ones (ViSU with
COCO images) are decoded batch by batch, so memory does not grow with the dataset. A frozen reference model's
embeddings never change during training, so they can be computed once per quadruple (`reference`) and sliced
into each batch instead of a reference forward pass per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from safeclip.clip.model import ClipBundle, pixel_values, tokenize
from safeclip.data.schemas import VISU
from safeclip.io import InputError, read_parquet

PIXEL_CACHE_LIMIT = 2 * 1024**3  # bytes of float32 pixels kept in memory


@dataclass
class Quadruples:
    ids: list[str]
    safe_text: list[str]
    unsafe_text: list[str]
    safe_images: list
    unsafe_images: list
    tags: list[str | None]
    tokens_safe: dict[str, torch.Tensor]
    tokens_unsafe: dict[str, torch.Tensor]
    bundle: ClipBundle
    where: str
    _pixels: tuple[torch.Tensor, torch.Tensor] | None = None
    # SafeR-CLIP: row index of each quadruple's redirection target (t^, v^) in this same set; batches then
    # carry the target's safe caption and image as target_input_ids / target_attention_mask / target_pixels.
    targets: np.ndarray | None = None
    # A frozen reference's projected embeddings of every quadruple, keyed "{text|image}_{safe|unsafe}" ([N, d]
    # each; see `embed_reference`): batches then carry them as ref_* rows (ref_*_target for the targets).
    reference: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pixels is not None:
            i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            return self._pixels[0][i], self._pixels[1][i]
        proc = self.bundle.image_processor
        return (pixel_values(proc, [self.safe_images[i] for i in idx], f"{self.where}: image"),
                pixel_values(proc, [self.unsafe_images[i] for i in idx], f"{self.where}: nsfw_image"))

    def safe_pixels(self, idx: Sequence[int]) -> torch.Tensor:
        if self._pixels is not None:
            return self._pixels[0][torch.as_tensor(np.asarray(idx), dtype=torch.long)]
        return pixel_values(self.bundle.image_processor, [self.safe_images[i] for i in idx], f"{self.where}: image")

    def batch(self, idx: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        safe_px, unsafe_px = self.pixels(idx)
        out = {f"safe_{k}": v[i] for k, v in self.tokens_safe.items()}
        out |= {f"unsafe_{k}": v[i] for k, v in self.tokens_unsafe.items()}
        out |= {"safe_pixels": safe_px, "unsafe_pixels": unsafe_px}
        if self.targets is not None:
            t_idx = self.targets[np.asarray(idx)]
            t = torch.as_tensor(t_idx, dtype=torch.long)
            out |= {f"target_{k}": v[t] for k, v in self.tokens_safe.items()}
            out["target_pixels"] = self.safe_pixels(t_idx)
        if self.reference is not None:
            out |= {f"ref_{k}": v[i] for k, v in self.reference.items()}
            if self.targets is not None:
                t = torch.as_tensor(self.targets[np.asarray(idx)], dtype=torch.long)
                out |= {f"ref_{tower}_target": self.reference[f"{tower}_safe"][t] for tower in ("text", "image")
                        if f"{tower}_safe" in self.reference}
        return {k: v.to(device) for k, v in out.items()}


SIDES = ("safe", "unsafe")


def reference_embeds(reference, batch: dict[str, torch.Tensor], sides: Sequence[str]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """T0 and V0 of the batch's `sides` (safe, unsafe, target), stacked in that order: the batch's cached ref_*
    rows when it carries them (a frozen reference, embedded once: `Quadruples.reference`), else one no_grad
    forward of `reference` over all the sides."""
    if all(f"ref_text_{s}" in batch and f"ref_image_{s}" in batch for s in sides):
        return (torch.cat([batch[f"ref_text_{s}"] for s in sides]),
                torch.cat([batch[f"ref_image_{s}"] for s in sides]))
    with torch.no_grad():
        ref = reference(input_ids=torch.cat([batch[f"{s}_input_ids"] for s in sides]),
                        attention_mask=torch.cat([batch[f"{s}_attention_mask"] for s in sides]),
                        pixel_values=torch.cat([batch[f"{s}_pixels"] for s in sides]))
    return ref.text_embeds, ref.image_embeds


def embed_reference(reference, q: Quadruples, sides: Sequence[str], batch_size: int, device,
                    autocast=None) -> dict[str, torch.Tensor]:
    """A frozen reference's T0 and V0 of every quadruple's `sides` (safe, unsafe), in batches, both sides in one
    forward as in the objectives; kept on the CPU. Row by row the same numbers as a forward of any training batch
    (each row's embedding does not depend on the others in its batch), computed once instead of once per step."""
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise ValueError(f"reference sides must be among {SIDES}, got {sorted(unknown)}")
    parts: dict[str, list[torch.Tensor]] = {f"{tower}_{side}": [] for side in sides for tower in ("text", "image")}
    for a in range(0, len(q), batch_size):
        b = q.batch(range(a, min(a + batch_size, len(q))), device)
        with autocast() if autocast is not None else nullcontext():
            text, image = reference_embeds(reference, b, sides)
        n = len(b["safe_input_ids"])
        for j, side in enumerate(sides):
            parts[f"text_{side}"].append(text[j * n:(j + 1) * n].cpu())
            parts[f"image_{side}"].append(image[j * n:(j + 1) * n].cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def quadruple_rows(path: str) -> list[dict]:
    """The rows of a visu split that form quadruples: those with an unsafe image (every method trains on
    exactly these, in this order)."""
    return [r for r in read_parquet(path, VISU).to_pylist() if r["nsfw_image"] is not None]


def load_quadruples(path: str, bundle: ClipBundle, limit: int | None = None) -> tuple[Quadruples, int]:
    """Rows of a visu split that have an unsafe image, and how many rows were left out for lacking one."""
    rows = read_parquet(path, VISU).to_pylist()
    kept = [r for r in rows if r["nsfw_image"] is not None]
    for i, r in enumerate(kept):
        if r["image"] is None:
            raise InputError(f"{path}: row {i} ({r['id']}): field 'image' is null; every quadruple needs its "
                             "safe image")
    if limit is not None:
        kept = kept[:limit]
    q = Quadruples(ids=[r["id"] for r in kept], safe_text=[r["safe"] for r in kept],
                   unsafe_text=[r["nsfw"] for r in kept], safe_images=[r["image"] for r in kept],
                   unsafe_images=[r["nsfw_image"] for r in kept], tags=[r["tag"] for r in kept],
                   tokens_safe={}, tokens_unsafe={}, bundle=bundle, where=path)
    # Both captions padded to one length, so t and t* can share a forward pass.
    both = tokenize(bundle.tokenizer, q.safe_text + q.unsafe_text)
    n = len(kept)
    q.tokens_safe = {k: v[:n] for k, v in both.items()}
    q.tokens_unsafe = {k: v[n:] for k, v in both.items()}
    size = bundle.image_processor.crop_size
    pixel_bytes = 2 * n * 3 * size["height"] * size["width"] * 4
    if n and pixel_bytes <= PIXEL_CACHE_LIMIT:
        q._pixels = q.pixels(range(n))
    return q, len(rows) - len([r for r in rows if r["nsfw_image"] is not None])
