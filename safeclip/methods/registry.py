"""The make-safe methods by name, in one torch-free place: params' `methods` names, the report's and the seeds
table's display names, the exported model card's text and the base CLIP's model name are read from here.

Adding a method: an entry here, its params section (`make_safe.<name>` in `params.py`), its runner in
`runners.py` (`RUNNERS`, checked against `NAMES` by the tests) and `dvc.yaml`'s matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = "none"  # the base CLIP's model name: metrics/<kind>/none.json, the *_base stages, `--model none`
BASE_DISPLAY = "CLIP (base)"


@dataclass(frozen=True)
class Method:
    name: str  # a `methods` entry, dvc.yaml's matrix value, models/safe/<name>, metrics/<kind>/<name>.json
    display: str  # in the report, the seeds table and the model card
    card: str  # the exported model card's paragraph on what the method did


METHODS = (
    Method("safe_clip", "Safe-CLIP", (
        "**Safe-CLIP** (Poppi et al., ECCV 2024) fine-tunes both CLIP towers with LoRA on ViSU quadruples (a safe "
        "caption and image with their unsafe counterparts). Eight loss terms (cosine distances and InfoNCE against a "
        "frozen copy of the base model) redirect each unsafe caption and image to the embedding of its safe "
        "counterpart while keeping safe inputs where the base model put them. The LoRA weights are merged, so the "
        "result is a plain CLIP with the base model's architecture."
    )),
    Method("safer_clip", "SafeR-CLIP", (
        "**SafeR-CLIP** (Yousaf et al., AAAI 2026) refines Safe-CLIP: each unsafe input is redirected to its "
        "*nearest* safe caption (and that caption's image) in the frozen base model instead of its fixed ViSU "
        "partner, with a relative softplus loss whose only negative is the input's own unsafe counterpart, "
        "unimodal pulls towards the target, Safe-CLIP's preservation terms and an easy-to-hard curriculum. The "
        "loss weights were not published; see the params below. LoRA on both towers, merged into a plain CLIP."
    )),
    Method("uwm", "UWM", (
        "**UWM** (Unsafe Weights Manipulation, D'Inca et al., WACV 2026) is training-free: one forward pass over "
        "paired safe/unsafe calibration inputs scores every weight of the selected layers by how much more it "
        "serves unsafe than safe content; in each layer the weights holding the top tau of the score mass are "
        "multiplied by alpha (negated by default). The architecture and every other weight are unchanged."
    )),
)
NAMES = tuple(m.name for m in METHODS)
BY_NAME = {m.name: m for m in METHODS}
DISPLAY_NAMES = {BASE: BASE_DISPLAY, **{m.name: m.display for m in METHODS}}


def display_name(model: str) -> str:
    """A model's name for people: the base's or a method's display name; any other name as it is."""
    return DISPLAY_NAMES.get(model, model)
