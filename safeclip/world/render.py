"""Renderer: scene -> RGB image (numpy/PIL), deterministic under a per-image seed.

A safe scene and its unsafe twin rendered with the same seed share every nuisance draw (size, jitter, colour
noise, pixel noise), so they differ only in the glyph: the image pair is a true minimal pair.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from safeclip.world.catalogue import BACKGROUNDS, OBJECT_COLOURS, OBJECTS, POSITIONS
from safeclip.world.scene import Scene

_SS = 8  # supersampling factor for glyph masks


def _poly(d: ImageDraw.ImageDraw, s: int, pts: list[tuple[float, float]]) -> None:
    d.polygon([(x * s, y * s) for x, y in pts], fill=255)


def _rect(d: ImageDraw.ImageDraw, s: int, x0: float, y0: float, x1: float, y1: float) -> None:
    d.rectangle([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=255)


def _star_points(n: int, r_out: float, r_in: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = -math.pi / 2 + i * math.pi / n
        pts.append((0.5 + r * math.cos(a), 0.5 + r * math.sin(a)))
    return pts


def _draw_glyph(glyph: str, d: ImageDraw.ImageDraw, s: int) -> None:
    """Glyphs in the unit square; bold strokes so they survive 10- to 15-pixel rendering."""
    e = lambda x0, y0, x1, y1: d.ellipse([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=255)  # noqa: E731
    hole = lambda x0, y0, x1, y1: d.ellipse([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=0)  # noqa: E731
    match glyph:
        case "circle":
            e(0.05, 0.05, 0.95, 0.95)
        case "square":
            _rect(d, s, 0.1, 0.1, 0.9, 0.9)
        case "triangle":
            _poly(d, s, [(0.5, 0.03), (0.97, 0.95), (0.03, 0.95)])
        case "diamond":
            _poly(d, s, [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])
        case "hexagon":
            _poly(d, s, [(0.5 + 0.48 * math.cos(a), 0.5 + 0.48 * math.sin(a))
                         for a in (k * math.pi / 3 for k in range(6))])
        case "ring":
            e(0.0, 0.0, 1.0, 1.0)
            hole(0.3, 0.3, 0.7, 0.7)
        case "frame":
            _rect(d, s, 0.0, 0.0, 1.0, 1.0)
            d.rectangle([0.3 * s, 0.3 * s, 0.7 * s - 1, 0.7 * s - 1], fill=0)
        case "plus":
            _rect(d, s, 0.33, 0.0, 0.67, 1.0)
            _rect(d, s, 0.0, 0.33, 1.0, 0.67)
        case "bar":
            _rect(d, s, 0.0, 0.35, 1.0, 0.65)
        case "dots":
            for cx, cy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
                e(cx - 0.22, cy - 0.22, cx + 0.22, cy + 0.22)
        case "crescent":
            e(0.0, 0.0, 1.0, 1.0)
            hole(0.35, -0.1, 1.15, 0.85)
        case "heart":
            e(0.0, 0.05, 0.55, 0.6)
            e(0.45, 0.05, 1.0, 0.6)
            _poly(d, s, [(0.03, 0.42), (0.97, 0.42), (0.5, 0.98)])
        case "gamma":  # an inverted L
            _rect(d, s, 0.0, 0.0, 1.0, 0.38)
            _rect(d, s, 0.0, 0.0, 0.38, 1.0)
        case "bolt":  # a thick Z
            _rect(d, s, 0.0, 0.0, 1.0, 0.3)
            _rect(d, s, 0.0, 0.7, 1.0, 1.0)
            _poly(d, s, [(0.68, 0.3), (1.0, 0.3), (0.32, 0.7), (0.0, 0.7)])
        case "pause":  # two thick upright bars (a thin X-cross was drawn by the tiny diffusion model 3% of the time)
            _rect(d, s, 0.0, 0.0, 0.36, 1.0)
            _rect(d, s, 0.64, 0.0, 1.0, 1.0)
        case "arrow":  # a thick upward arrow
            _poly(d, s, [(0.5, 0.0), (1.0, 0.5), (0.0, 0.5)])
            _rect(d, s, 0.32, 0.45, 0.68, 1.0)
        case "checker":
            _rect(d, s, 0.0, 0.0, 0.5, 0.5)
            _rect(d, s, 0.5, 0.5, 1.0, 1.0)
        case "hourglass":
            _poly(d, s, [(0.0, 0.0), (1.0, 0.0), (0.5, 0.5)])
            _poly(d, s, [(0.0, 1.0), (1.0, 1.0), (0.5, 0.5)])
            _rect(d, s, 0.38, 0.3, 0.62, 0.7)
        case "chevron":  # a thick upward V
            _poly(d, s, [(0.5, 0.0), (1.0, 0.55), (1.0, 1.0), (0.5, 0.45), (0.0, 1.0), (0.0, 0.55)])
        case "tee":
            _rect(d, s, 0.0, 0.0, 1.0, 0.35)
            _rect(d, s, 0.32, 0.0, 0.68, 1.0)
        case _:
            raise ValueError(f"unknown glyph {glyph!r}")


@lru_cache(maxsize=512)
def glyph_mask(glyph: str, size: int) -> np.ndarray:
    """Anti-aliased coverage mask in [0, 1], shape (size, size)."""
    s = size * _SS
    im = Image.new("L", (s, s), 0)
    _draw_glyph(glyph, ImageDraw.Draw(im), s)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class RenderConfig:
    image_size: int = 32
    glyph_fraction: float = 0.45  # glyph side as a fraction of the canvas (params.World: the same default)
    size_jitter: int = 1  # pixels, +-
    position_jitter: int = 1  # pixels, +-
    colour_jitter: int = 18  # per channel, +-
    noise_std: float = 6.0  # Gaussian pixel noise (0-255 scale)


def render(scene: Scene, seed: int, cfg: RenderConfig = RenderConfig()) -> np.ndarray:
    """HxWx3 uint8. Every random draw happens whatever the glyphs are, so twins share nuisance exactly."""
    rng = np.random.default_rng(seed)
    n = cfg.image_size
    bg = np.array(BACKGROUNDS[scene.background], np.float32) + rng.integers(
        -cfg.colour_jitter, cfg.colour_jitter + 1, 3)
    img = np.broadcast_to(bg, (n, n, 3)).copy()
    base = max(4, round(cfg.glyph_fraction * n))
    cell = n / 3
    for o in scene.objects:
        side = base + int(rng.integers(-cfg.size_jitter, cfg.size_jitter + 1))
        dx, dy = rng.integers(-cfg.position_jitter, cfg.position_jitter + 1, 2)
        colour = np.array(OBJECT_COLOURS[o.colour], np.float32) + rng.integers(
            -cfg.colour_jitter, cfg.colour_jitter + 1, 3)
        col, row = POSITIONS[o.position]
        x0 = int(round((col + 0.5) * cell - side / 2 + dx))
        y0 = int(round((row + 0.5) * cell - side / 2 + dy))
        x0, y0 = min(max(x0, 0), n - side), min(max(y0, 0), n - side)
        m = glyph_mask(OBJECTS[o.name].glyph, side)[..., None]
        patch = img[y0:y0 + side, x0:x0 + side]
        img[y0:y0 + side, x0:x0 + side] = patch * (1 - m) + colour * m
    img += rng.normal(0.0, cfg.noise_std, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def to_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
