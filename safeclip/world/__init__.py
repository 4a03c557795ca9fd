"""The synthetic world: a compositional scene renderer with a caption grammar and an oracle.

It stands in for COCO + an NSFW generator + NSFW judges, with exact ground truth, so the whole pipeline can
be trained and measured offline on a CPU.
"""

from safeclip.world.catalogue import OBJECTS, SAFE_TWIN, TWINNED_SAFE, UNSAFE_TWIN, VISU_CONCEPTS
from safeclip.world.grammar import caption, parse, vocabulary
from safeclip.world.oracle import RewriteVerdict, caption_is_unsafe, judge_rewrite, keeps_scene
from safeclip.world.render import RenderConfig, render, to_png
from safeclip.world.scene import Scene, SceneObject

__all__ = [
    "OBJECTS", "SAFE_TWIN", "TWINNED_SAFE", "UNSAFE_TWIN", "VISU_CONCEPTS", "caption", "parse", "vocabulary",
    "RewriteVerdict", "caption_is_unsafe", "judge_rewrite", "keeps_scene", "RenderConfig", "render", "to_png",
    "Scene", "SceneObject",
]
