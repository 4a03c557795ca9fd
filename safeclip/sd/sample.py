"""Batched, resumable image generation: each finished prompt batch is a Parquet shard in the checkpoint folder.

A killed run restarts after the last complete shard; since every image's noise comes from its own seed (see
`image_seed`), the resumed run's images are the uninterrupted run's, bit for bit on the same device.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from tqdm import tqdm

from safeclip.eval.generation import Prompt, image_seed
from safeclip.io import read_parquet, write_parquet

SHARD = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("k", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("png", pa.binary(), nullable=False),
])


def jobs(prompts: Sequence[Prompt], seeds: Sequence[int], images_per_prompt: int) -> list[tuple[Prompt, int, int]]:
    """(prompt, k, image seed) for every image, in a fixed order."""
    out = []
    for p in prompts:
        k = 0
        for s in seeds:
            for _ in range(images_per_prompt):
                out.append((p, k, image_seed(s, p.id, k)))
                k += 1
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def generate(pipe, work: Sequence[tuple[Prompt, int, int]], batch_size: int, shard_dir: Path, *,
             num_inference_steps: int, guidance_scale: float, guidance_rescale: float, height: int | None,
             width: int | None, log: logging.Logger, desc: str = "generate") -> list[dict]:
    """Every image of `work` as {prompt_id, k, seed, png}, generating only the shards not already on disk."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_batches = (len(work) + batch_size - 1) // batch_size
    done = sum((shard_dir / f"shard-{b:05d}.parquet").exists() for b in range(n_batches))
    if done:
        log.info("resuming: %d of %d prompt batches already generated", done, n_batches)
    device = pipe.unet.device
    for b in tqdm(range(n_batches), desc=desc, mininterval=10):
        path = shard_dir / f"shard-{b:05d}.parquet"
        if path.exists():
            continue
        chunk = work[b * batch_size:(b + 1) * batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _, _, seed in chunk]
        # Initial latents drawn on the CPU from each image's own generator: the same noise on any device.
        shape = (pipe.unet.config.in_channels, (height or pipe.unet.config.sample_size * pipe.vae_scale_factor)
                 // pipe.vae_scale_factor, (width or pipe.unet.config.sample_size * pipe.vae_scale_factor)
                 // pipe.vae_scale_factor)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, pipe.unet.dtype)
        with torch.no_grad():
            images = pipe([p.text for p, _, _ in chunk], latents=latents, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, height=height,
                          width=width, generator=generators, output_type="pil").images
        rows = [{"prompt_id": p.id, "k": k, "seed": seed, "png": png_bytes(im)}
                for (p, k, seed), im in zip(chunk, images, strict=True)]
        write_parquet(path, rows, SHARD)  # atomic: a kill mid-write leaves no shard
    rows = []
    for b in range(n_batches):
        rows.extend(read_parquet(shard_dir / f"shard-{b:05d}.parquet", SHARD).to_pylist())
    expected = [(p.id, k) for p, k, _ in work]
    if [(r["prompt_id"], r["k"]) for r in rows] != expected:
        raise RuntimeError(f"{shard_dir}: shards do not match the prompts (a stale checkpoint?); delete the folder")
    return rows


def decode_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def image_grid(rows: Sequence[Sequence[Image.Image]], tile: int = 96, pad: int = 2) -> Image.Image:
    """Images in a grid (rows x columns), upscaled with nearest neighbour so small world images stay legible."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    grid = Image.new("RGB", (n_cols * (tile + pad) + pad, n_rows * (tile + pad) + pad), (255, 255, 255))
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            resample = Image.Resampling.NEAREST if im.width < tile else Image.Resampling.BICUBIC
            grid.paste(im.resize((tile, tile), resample), (pad + j * (tile + pad), pad + i * (tile + pad)))
    return grid


def as_array(images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB")) for im in images])
