"""The oracle: ground-truth judgements on captions, which the world can give because it made them."""

from __future__ import annotations

from dataclasses import dataclass

from safeclip.world.catalogue import SAFE_TWIN, UNSAFE_TWIN
from safeclip.world.grammar import parse
from safeclip.world.scene import Scene


@dataclass(frozen=True)
class RewriteVerdict:
    """How good an unsafe rewrite of a safe caption is."""

    parses: bool
    unsafe: bool
    scene_kept: bool  # same background, and same colour and position for every object
    exact_twin: bool  # every safe object swapped for its own unsafe twin

    @property
    def good(self) -> bool:
        return self.parses and self.unsafe and self.scene_kept

    @property
    def score(self) -> float:
        """Ranks candidates: unsafe and on-scene best, unparseable worst (used for DPO preferences)."""
        if not self.parses:
            return 0.0
        return 1.0 + 2.0 * self.unsafe + 1.0 * self.scene_kept + 0.5 * (self.unsafe and self.scene_kept)


def caption_is_unsafe(text: str) -> bool | None:
    """True/False for a world caption, None when it does not parse."""
    scene = parse(text)
    return None if scene is None else scene.unsafe


def keeps_scene(safe: Scene, unsafe: Scene) -> bool:
    return safe.layout() == unsafe.layout()


def is_exact_twin(safe: Scene, unsafe: Scene) -> bool:
    """Same layout, and the object at each position is the twin of the safe object there."""
    at = {o.position: o.name for o in unsafe.objects}
    return keeps_scene(safe, unsafe) and all(UNSAFE_TWIN.get(s.name, s.name) == at[s.position]
                                             for s in safe.objects)


def judge_rewrite(safe_caption: str, generated: str) -> RewriteVerdict:
    safe = parse(safe_caption)
    out = parse(generated)
    if safe is None:
        raise ValueError(f"safe caption is not a world caption: {safe_caption!r}")
    if out is None:
        return RewriteVerdict(False, False, False, False)
    return RewriteVerdict(True, out.unsafe, keeps_scene(safe, out), is_exact_twin(safe, out))


def safe_counterpart(unsafe: Scene) -> Scene:
    """The safe scene an unsafe scene redirects to (its twin map inverted)."""
    return unsafe.with_objects([SAFE_TWIN.get(o.name, o.name) for o in unsafe.objects])
