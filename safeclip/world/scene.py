"""Scenes: the ground truth behind every world caption and image."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from safeclip.world.catalogue import BACKGROUNDS, OBJECT_COLOURS, OBJECTS, POSITIONS, UNSAFE_TWIN


@dataclass(frozen=True)
class SceneObject:
    name: str
    colour: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]

    @property
    def unsafe(self) -> bool:
        return any(OBJECTS[o.name].unsafe for o in self.objects)

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(c for o in self.objects if (c := OBJECTS[o.name].concept))

    def layout(self) -> tuple:
        """Everything but object identity: what a faithful unsafe rewrite must keep (in any listing order)."""
        return (self.background, tuple(sorted((o.position, o.colour) for o in self.objects)))

    def canonical(self) -> Scene:
        """The same scene with objects listed in grid order, so equal scenes compare and hash equal."""
        order = list(POSITIONS)
        return Scene(self.background, tuple(sorted(self.objects, key=lambda o: order.index(o.position))))

    def with_objects(self, names: list[str]) -> Scene:
        return Scene(self.background, tuple(
            SceneObject(n, o.colour, o.position) for n, o in zip(names, self.objects, strict=True)))

    def unsafe_twin(self) -> Scene:
        """The same scene with every twinned safe object swapped for its unsafe stand-in."""
        return self.with_objects([UNSAFE_TWIN.get(o.name, o.name) for o in self.objects])

    def to_json(self) -> str:
        return json.dumps({"background": self.background,
                           "objects": [[o.name, o.colour, o.position] for o in self.objects]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        d = json.loads(text)
        return cls(d["background"], tuple(SceneObject(*o) for o in d["objects"]))


def is_valid(scene: Scene) -> bool:
    """World rules: known words, distinct positions, no object the colour of its background."""
    if scene.background not in BACKGROUNDS or not scene.objects:
        return False
    positions = [o.position for o in scene.objects]
    return len(set(positions)) == len(positions) and all(
        o.name in OBJECTS and o.colour in OBJECT_COLOURS and o.position in POSITIONS
        and o.colour != scene.background for o in scene.objects)


def enumerate_scenes(object_names: tuple[str, ...], positions: Sequence[str]) -> list[Scene]:
    """Every valid one-object scene over the given objects and positions (params `world.positions`: no default
    here, so no caller can drift from the world's), in a fixed order."""
    scenes = []
    for name, colour, position, bg in itertools.product(object_names, OBJECT_COLOURS, positions, BACKGROUNDS):
        s = Scene(bg, (SceneObject(name, colour, position),))
        if is_valid(s):
            scenes.append(s)
    return scenes


def sample_scene(rng: np.random.Generator, object_names: tuple[str, ...], max_objects: int,
                 positions: Sequence[str]) -> Scene:
    """A random valid scene with 1..max_objects objects at distinct positions among `positions`."""
    n = int(rng.integers(1, max_objects + 1))
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in OBJECT_COLOURS if c != bg]
    picked = rng.permutation(list(positions))[:n]
    objs = tuple(SceneObject(object_names[rng.integers(len(object_names))], colours[rng.integers(len(colours))],
                             str(p)) for p in picked)
    return Scene(bg, objs).canonical()
