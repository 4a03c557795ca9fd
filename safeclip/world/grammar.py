"""Caption grammar: scene -> caption, and its exact inverse (the oracle's parser)."""

from __future__ import annotations

import re
from functools import lru_cache

from safeclip.world.catalogue import BACKGROUNDS, OBJECT_COLOURS, OBJECTS, POSITION_PHRASES, SAFE_OBJECTS
from safeclip.world.scene import Scene, SceneObject, is_valid

TEMPLATE_HINT = "a {colour} {object} {position phrase} [and a ...] on a {background} background"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe_object(o: SceneObject) -> str:
    return f"{article(o.colour)} {o.colour} {o.name} {POSITION_PHRASES[o.position]}"


def caption(scene: Scene) -> str:
    """'a red circle on the left on a blue background'; objects joined by 'and'."""
    return " and ".join(describe_object(o) for o in scene.objects) + f" on a {scene.background} background"


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


@lru_cache(maxsize=1)
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    obj = (rf"(an?) ({_alt(OBJECT_COLOURS)}) ({_alt(OBJECTS)}) ({_alt(POSITION_PHRASES.values())})")
    full = re.compile(rf"^({obj}(?: and {obj})*) on a ({_alt(BACKGROUNDS)}) background$")
    return full, re.compile(obj)


def parse(text: str) -> Scene | None:
    """The scene a caption describes, or None if it is not a well-formed world caption."""
    norm = " ".join(text.strip().lower().split()).rstrip(".")
    full, obj = _patterns()
    m = full.match(norm)
    if not m:
        return None
    phrase_to_pos = {v: k for k, v in POSITION_PHRASES.items()}
    objects = []
    for part in m.group(1).split(" and "):
        om = obj.fullmatch(part)
        if om is None or om.group(1) != article(om.group(2)):
            return None
        objects.append(SceneObject(om.group(3), om.group(2), phrase_to_pos[om.group(4)]))
    scene = Scene(m.group(m.lastindex), tuple(objects))
    return scene if is_valid(scene) else None


def vocabulary() -> list[str]:
    """Every word a world caption can contain (for tokenizer training)."""
    words = {"a", "an", "and", "on", "background"}
    words |= set(OBJECT_COLOURS) | set(BACKGROUNDS) | set(OBJECTS)
    for phrase in POSITION_PHRASES.values():
        words |= set(phrase.split())
    return sorted(words)


def safe_object_names() -> tuple[str, ...]:
    return tuple(o.name for o in SAFE_OBJECTS)
