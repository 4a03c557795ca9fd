"""Files that params point at are stage inputs too, and DVC only sees what a stage lists as a dependency.

A dvc.yaml dependency cannot depend on the profile (a COCO path that does not exist in the world profile would
stop the world DAG), so each kind of outside input has one folder in the repo that its stages depend on, in
every profile: the COCO files live under `data/coco`, the I2P CSV under `data/i2p`, and so on. A param that
points outside its folder is refused before any work, naming the param and the folder: editing such a file
would rerun nothing (DVC does not follow symbolic links either). Hub ids are not files: the model stages
record the snapshot they resolved to.
"""

from __future__ import annotations

from pathlib import Path

from safeclip.io import InputError

HUB_KINDS = ("models", "visu_text")  # a param of these kinds may name a hub id instead of a path
# kind -> the folder its stages depend on (dvc.yaml), each committed with a README.md
FOLDERS: dict[str, str] = {
    "coco": "data/coco",
    "visu_text": "data/visu_text",
    "i2p": "data/i2p",
    "q16": "data/q16",
    "zeroshot": "data/zeroshot",
    "models": "data/models",
}


def require_tracked(path: str | Path, kind: str, param: str) -> None:
    """`path` (a local file or folder a param names) must sit inside the folder DVC tracks for `kind`, with no
    symbolic link on the way (DVC hashes the link, not what it points at)."""
    folder = Path(FOLDERS[kind]).absolute()
    target = Path(path).expanduser().absolute()
    try:
        steps = target.relative_to(folder).parts
    except ValueError:
        steps = None
    linked = steps is not None and any((folder.joinpath(*steps[:i + 1])).is_symlink() for i in range(len(steps)))
    if steps is None or linked:
        why = "a symbolic link on the way, which DVC does not follow" if linked else \
            f"it is not inside {FOLDERS[kind]}/, the folder the stage depends on in dvc.yaml"
        raise InputError(f"{param}: {path}: {why}, so editing it would rerun nothing. Move or copy it into "
                         f"{FOLDERS[kind]}/ and point {param} there")


def require_tracked_source(source: str | None, kind: str, param: str) -> None:
    """A model or dataset param that is a hub id, or a local path: only the path must be tracked."""
    from safeclip.hub import is_local, looks_like_path

    if source and source != "world" and (is_local(source) or looks_like_path(source)):
        require_tracked(source, kind, param)


def stage_inputs(params, stage: str) -> list[tuple[str, str, str]]:
    """(param, local path or hub id, kind) of every outside input `stage` reads under these params."""
    name = stage.split("@")[0].removesuffix("_base")
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
    return [(p, v, k) for p, v, k in table.get(name, []) if v]


def require_tracked_inputs(params, stage: str) -> None:
    """Every local input of `stage` inside its tracked folder (hub ids pass): run before any work."""
    for param, value, kind in stage_inputs(params, stage):
        if value.startswith("open_clip:"):  # open_clip:ARCH, ARCH/TAG or ARCH/[/]path/weights.safetensors
            pretrained = value.partition("/")[2]
            if pretrained.endswith(".safetensors"):  # a file to load_open_clip, relative or absolute; else a tag
                require_tracked(pretrained, kind, param)
        elif kind in HUB_KINDS:
            require_tracked_source(value, kind, param)
        else:
            require_tracked(value, kind, param)
