"""Files that params point at are stage inputs too, and DVC only sees what a stage lists as a dependency.

Researchers keep COCO, ViSU-Text, the I2P CSV and model weights where they are (shared storage, another disk),
so each param that may name such a file or folder is a dependency of the stages that read it, wherever it
points: `dvc.yaml` lists `${inputs.<stage>.<param>}` for every param in `INPUTS`, and the `inputs` section of
params.yaml says what each of those is under the current params. It is derived, never written by hand:

- a param the stage reads under these params, naming a local file or folder: that path, as written (relative to
  the repo root or absolute; DVC hashes it and follows a symbolic link to its target);
- anything else (a hub id, `world`, unset, or a param the stage does not read under this profile): the committed
  README of the param's default folder (`data/coco/README.md`, ...), so the world's `dvc repro` needs no data.

`conf/config.yaml` writes `inputs: ${safeclip_inputs:}`: the composition (`python -m safeclip.profiles` and `dvc
exp run -S`, both through Hydra) calls `derive` through the resolver that safeclip.profiles registers (and the
Hydra plugin in `conf/hydra_plugins/`, for DVC). A params.yaml edited by hand is re-derived with `python -m
safeclip.profiles --inputs`; a stage refuses to start when the section does not match its params, since DVC would
then hash files other than those the stage reads. Hub ids are not files: the model stages record the snapshot
they resolved to, and their `revision` param reruns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safeclip.io import InputError

# kind -> its default folder; the folder's committed README.md stands in for an input that is not a local file
FOLDERS: dict[str, str] = {
    "coco": "data/coco",
    "visu_text": "data/visu_text",
    "i2p": "data/i2p",
    "q16": "data/q16",
    "zeroshot": "data/zeroshot",
    "models": "data/models",
}
HUB_KINDS = ("models", "visu_text")  # a param of these kinds may name a hub id instead of a path
ZEROSHOT_SLOTS = 8  # evaluate.zeroshot.datasets: dvc.yaml lists this many paths (a list cannot be templated)

_Q16 = [("judge.q16_prompts", "q16"), ("judge.q16_clip", "models")]
# stage (its name without @<model> or _base) -> every param that may name an outside input of it, and its kind
INPUTS: dict[str, list[tuple[str, str]]] = {
    "captions": [("captions.coco.annotations_train", "coco"), ("captions.coco.annotations_val", "coco"),
                 ("captions.coco.images_train", "coco"), ("captions.coco.images_val", "coco"),
                 ("captions.visu_hf.dataset", "visu_text"), ("captions.visu_hf.coco_images", "coco")],
    "base_llm": [("base_llm.source", "models")],
    "dpo": [("dpo.models.nsfw_classifier", "models"), ("dpo.models.similarity_model", "models")],
    "visu": [("visu.images.pipeline", "models"), *_Q16],
    "base_clip": [("base_clip.source", "models")],
    "base_sd": [("base_sd.source", "models")],
    "judge": _Q16,
    "evaluate": [("evaluate.zeroshot.datasets", "zeroshot")],
    "eval_generation": [*_Q16, ("eval_generation.i2p_csv", "i2p")],
    "eval_attack": _Q16,
}


def stage_key(stage: str) -> str:
    """`eval_generation@safe_clip` and `eval_generation_base` read what `eval_generation` reads."""
    return stage.split("@")[0].removesuffix("_base")


def stage_inputs(params, stage: str) -> list[tuple[str, str, str]]:
    """(param, local path or hub id, kind) of every outside input `stage` reads under these params."""
    cap, judge = params.captions, params.judge
    q16 = ([("judge.q16_prompts", judge.q16_prompts, "q16"), ("judge.q16_clip", judge.q16_clip, "models")]
           if judge.q16_prompts and "q16" in judge.judges else [])
    table: dict[str, list[tuple[str, str | None, str]]] = {
        "captions": ([(f"captions.coco.{k}", getattr(cap.coco, k), "coco") for k in
                      ("annotations_train", "annotations_val", "images_train", "images_val")]
                     if cap.source == "coco" else
                     [("captions.visu_hf.dataset", cap.visu_hf.dataset, "visu_text"),
                      ("captions.visu_hf.coco_images", cap.visu_hf.coco_images, "coco")]
                     if cap.source == "visu-hf" else []),
        "base_llm": [("base_llm.source", params.base_llm.source, "models")],
        "dpo": ([("dpo.models.nsfw_classifier", params.dpo.models.nsfw_classifier, "models"),
                 ("dpo.models.similarity_model", params.dpo.models.similarity_model, "models")]
                if params.dpo.scorer == "models" else []),
        "visu": ([("visu.images.pipeline", params.visu.images.pipeline, "models")]
                 + ([("judge.q16_prompts", judge.q16_prompts, "q16"), ("judge.q16_clip", judge.q16_clip, "models")]
                    if "q16" in params.visu.images.judges else [])
                 if params.captions.source != "world" else []),
        "base_clip": [("base_clip.source", params.base_clip.source, "models")],
        "base_sd": [("base_sd.source", params.base_sd.source, "models")],
        "judge": q16,
        "evaluate": [(f"evaluate.zeroshot.datasets[{i}].path", ds.path, "zeroshot")
                     for i, ds in enumerate(params.evaluate.zeroshot.datasets)],
        "eval_generation": q16 + ([("eval_generation.i2p_csv", params.eval_generation.i2p_csv, "i2p")]
                                  if params.eval_generation.i2p_csv else []),
        "eval_attack": q16 if params.eval_attack.n_generate else [],
    }
    return [(p, v, k) for p, v, k in table.get(stage_key(stage), []) if v]


def local_path(value: str, kind: str) -> str | None:
    """The file or folder DVC must hash for a param's value, or None for a hub id, an open_clip tag or `world`.

    `open_clip:ARCH/TAG` names a tag; `open_clip:ARCH/[/]path/weights.safetensors` a weights file, relative or
    absolute (load_open_clip decides the same way)."""
    from safeclip.hub import is_local, looks_like_path

    if value.startswith("open_clip:"):
        pretrained = value.partition("/")[2]
        return pretrained if pretrained.endswith(".safetensors") else None
    if kind in HUB_KINDS and (value == "world" or not (is_local(value) or looks_like_path(value))):
        return None
    return value


def placeholder(kind: str) -> str:
    return f"{FOLDERS[kind]}/README.md"


def _nest(out: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        out = out.setdefault(p, {})
    out[leaf] = value


def derive(params) -> dict[str, dict]:
    """The `inputs` section for these params: {stage: {param path, nested: the path DVC hashes}}."""
    out: dict[str, dict] = {}
    for stage, declared in INPUTS.items():
        read = {p: (v, k) for p, v, k in stage_inputs(params, stage)}
        section: dict = {}
        for param, kind in declared:
            if param == "evaluate.zeroshot.datasets":
                paths = [local_path(v, k) or placeholder(k) for p, (v, k) in read.items() if p.startswith(param)]
                if len(paths) > ZEROSHOT_SLOTS:
                    raise InputError(f"{param}: {len(paths)} datasets; dvc.yaml tracks at most {ZEROSHOT_SLOTS} "
                                     "(raise ZEROSHOT_SLOTS in safeclip/inputs.py and list the new slots there)")
                _nest(section, param, paths + [placeholder(kind)] * (ZEROSHOT_SLOTS - len(paths)))
                continue
            value = read.get(param, (None, kind))[0]
            _nest(section, param, (local_path(value, kind) if value else None) or placeholder(kind))
        out[stage] = section
    return out


def missing(params) -> list[str]:
    """One line per local input some stage reads that does not exist, naming the param and its stages."""
    where: dict[tuple[str, str], list[str]] = {}
    for stage in INPUTS:
        for param, value, kind in stage_inputs(params, stage):
            path = local_path(value, kind)
            if path is not None and not Path(path).expanduser().exists():
                where.setdefault((param, path), []).append(stage)
    return [f"{param}: {path}: no such file or folder (read by {', '.join(stages)})"
            for (param, path), stages in where.items()]


def _dotted(section: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in section.items():
        flat.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


def check_inputs(params, stage: str) -> None:
    """Before any work: params.yaml's `inputs` (what DVC hashes for this stage) is what these params derive. A
    params.yaml without the section (a test's, a script's) is not under DVC's templating: nothing to check. A
    missing file is DVC's to report first (a missing dependency, by path), then the stage's reader's, which
    names the param and says what the file should hold."""
    if params.inputs is None:
        return
    key = stage_key(stage)
    want = _dotted(derive(params).get(key, {}))
    have = _dotted(params.inputs.get(key, {}))
    wrong = [f"inputs.{key}.{p}: {have.get(p)!r}, but {p} derives {v!r}" for p, v in want.items() if have.get(p) != v]
    if wrong:
        raise InputError("params.yaml: the inputs section does not match the params (edited by hand?), so DVC "
                         "would hash other files than this stage reads: " + "; ".join(wrong) +
                         ". Re-derive it with `python -m safeclip.profiles --inputs` (composing with `python -m "
                         "safeclip.profiles` or `dvc exp run -S` derives it too)")
