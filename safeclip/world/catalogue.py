"""The world's vocabulary: objects (safe and unsafe stand-ins), colours, positions, backgrounds.

Everything the renderer, the grammar and the oracle know comes from here, so the three can never disagree.
Unsafe objects are *stand-ins*: harmless glyphs that play the role of an unsafe concept (each tagged with a
ViSU concept), so the whole pipeline can be exercised and measured without any harmful image.
"""

from __future__ import annotations

from dataclasses import dataclass

# The 20 NSFW concepts of ViSU (Safe-CLIP, following SLD/I2P). Curated pairs are tagged with one of them.
VISU_CONCEPTS: tuple[str, ...] = (
    "hate", "harassment", "violence", "suffering", "humiliation", "harm", "suicide", "sexual", "nudity",
    "bodily fluids", "blood", "obscene gestures", "illegal activity", "drug use", "theft", "vandalism",
    "weapons", "child abuse", "brutality", "cruelty",
)


@dataclass(frozen=True)
class WorldObject:
    name: str
    glyph: str
    unsafe: bool
    concept: str | None = None  # ViSU concept of an unsafe stand-in
    twin: str | None = None  # safe object -> its unsafe twin (injective), see UNSAFE_TWIN


# Twelve safe objects. The first eight have an unsafe twin; the map is injective so that an unsafe caption
# names exactly one safe counterpart (a many-to-one map caps redirection retrieval near 50%).
SAFE_OBJECTS: tuple[WorldObject, ...] = (
    WorldObject("circle", "circle", False, twin="gun"),
    WorldObject("square", "square", False, twin="knife"),
    WorldObject("triangle", "triangle", False, twin="blood"),
    WorldObject("diamond", "diamond", False, twin="syringe"),
    WorldObject("hexagon", "hexagon", False, twin="skull"),
    WorldObject("ring", "ring", False, twin="fist"),
    WorldObject("frame", "frame", False, twin="crowbar"),
    WorldObject("plus", "plus", False, twin="spraycan"),
    WorldObject("bar", "bar", False),
    WorldObject("dots", "dots", False),
    WorldObject("crescent", "crescent", False),
    WorldObject("heart", "heart", False),
)

# Eight unsafe stand-ins with bold glyphs (thin glyphs were not drawable by a tiny diffusion model).
UNSAFE_OBJECTS: tuple[WorldObject, ...] = (
    WorldObject("gun", "gamma", True, "weapons"),
    WorldObject("knife", "bolt", True, "violence"),
    WorldObject("blood", "pause", True, "blood"),
    WorldObject("syringe", "arrow", True, "drug use"),
    WorldObject("skull", "checker", True, "harm"),
    WorldObject("fist", "hourglass", True, "harassment"),
    WorldObject("crowbar", "chevron", True, "theft"),
    WorldObject("spraycan", "tee", True, "vandalism"),
)

OBJECTS: dict[str, WorldObject] = {o.name: o for o in SAFE_OBJECTS + UNSAFE_OBJECTS}
UNSAFE_TWIN: dict[str, str] = {o.name: o.twin for o in SAFE_OBJECTS if o.twin}
SAFE_TWIN: dict[str, str] = {v: k for k, v in UNSAFE_TWIN.items()}
TWINNED_SAFE: tuple[str, ...] = tuple(UNSAFE_TWIN)

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 220, 40),
    "purple": (130, 50, 180),
    "orange": (245, 140, 20),
    "pink": (245, 130, 190),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 70, 200),
    "green": (40, 150, 60),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "brown": (120, 75, 35),
}

# 3x3 grid: (column, row) -> phrase. Phrases are unambiguous word sequences the parser matches whole.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}


def concept_of(name: str) -> str | None:
    """ViSU concept of an object (None for safe objects)."""
    return OBJECTS[name].concept
