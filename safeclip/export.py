"""`safeclip export`: ship a made-safe CLIP as a self-describing folder.

    safeclip export --method safer_clip [--root .] [--out exports/safer_clip]

writes, atomically (the folder appears whole or not at all):

    clip/                         the merged CLIPModel (+ tokenizer, image processor): CLIPModel.from_pretrained
    text_encoder/, tokenizer/     Stable Diffusion's layout: CLIPTextModel (text tower, no projection) + tokenizer
    open_clip_model.safetensors   only when the base came from open_clip (models/base_clip/open_clip.json),
    open_clip_config.json         with {"arch", "force_quick_gelu", "source"} to rebuild it with open_clip
    README.md                     a model card: method, params, metrics vs the base CLIP, how to load, commit
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

from safeclip.clip.model import TEXT_PREFIX, text_encoder  # noqa: F401 (re-exported)
from safeclip.io import InputError, _umask, atomic_dir, write_json
from safeclip.methods.registry import BASE, BY_NAME, NAMES
from safeclip.params import Params, load_params
from safeclip.stage import entry_point

SD_TEXT_WIDTH = 768  # SD 1.x's cross-attention width (CLIP ViT-L/14's text tower)

# (metric key, label, better): the headline numbers of the card's table.
MAIN_METRICS = (
    ("retrieval.t_to_v.r1", "safe text → safe image R@1", "higher"),
    ("retrieval.v_to_t.r1", "safe image → safe text R@1", "higher"),
    ("retrieval.t_star_to_v.r1", "unsafe text → safe image R@1", "higher"),
    ("retrieval.v_star_to_t.r1", "unsafe image → safe text R@1", "higher"),
    ("unsafe_retrieved.unsafe_text.top1", "% unsafe results, unsafe text queries (top-1)", "lower"),
    ("safeground.PS", "SafeGround PS (safe inputs stay safe)", "higher"),
    ("safeground.PU", "SafeGround PU (unsafe inputs made safe)", "higher"),
    ("safeground.GS", "SafeGround GS", "higher"),
)
ZEROSHOT_KEYS = (("zeroshot.datasets_mean", "zero-shot accuracy, mean over datasets"),
                 ("zeroshot.mean", "zero-shot accuracy, mean"))


# --- the artefacts ----------------------------------------------------------------------------------------------


def save_text_encoder(encoder, path: Path) -> None:
    """`save_pretrained`, with the weights under `text_model.*` as in SD's own text_encoder checkpoints.

    transformers v5 saves a CLIPTextModel's keys flat (`embeddings.*`); v5 reads both layouts, but v4 (still what
    many diffusers installs use) reads only the prefixed one, so the file is rewritten into that layout.
    """
    from safetensors.torch import load_file, save_file

    encoder.save_pretrained(path, safe_serialization=True)
    weights = path / "model.safetensors"
    if weights.is_file():  # one file (a sharded save keeps transformers' own layout)
        state = load_file(weights)
        if not all(k.startswith(TEXT_PREFIX) for k in state):
            save_file({TEXT_PREFIX + k: v for k, v in state.items()}, str(weights), metadata={"format": "pt"})


def open_clip_spec(model, arch: str, pretrained: str | None) -> dict[str, Any]:
    quick_gelu = model.config.text_config.hidden_act == "quick_gelu"
    return {"arch": arch, "force_quick_gelu": quick_gelu and not arch.endswith("-quickgelu"), "source": pretrained}


def _check_open_clip(state: dict, spec: dict) -> None:
    """The checkpoint's keys and shapes are exactly those of `open_clip.create_model(arch)` (built on the meta
    device when possible: no memory, no init time)."""
    try:
        import open_clip
        import torch
    except ImportError:  # open_clip is optional here: the checkpoint is written anyway
        return
    kwargs = {"force_quick_gelu": True} if spec["force_quick_gelu"] else {}
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": expected, only shapes are read
    try:
        try:
            with torch.device("meta"):
                ref = open_clip.create_model(spec["arch"], pretrained=None, device="meta", **kwargs)
        except Exception:
            try:
                ref = open_clip.create_model(spec["arch"], pretrained=None, **kwargs)
            except RuntimeError as e:  # an architecture this open_clip does not know
                raise InputError(f"models/base_clip/open_clip.json: open_clip cannot build {spec['arch']!r} "
                                 f"({e})") from e
    finally:
        logging.disable(logging.NOTSET)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
        raise ValueError(f"the open_clip checkpoint does not fit open_clip.create_model({spec['arch']!r}): {diff[:5]}")


# --- the card ---------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable metrics JSON file ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: a metrics file must hold a JSON object")
    return data


def _metrics(root: Path, model: str) -> dict[str, Any] | None:
    parts = [read_metrics(root / "metrics" / kind / f"{model}.json") for kind in ("retrieval", "zeroshot")]
    if all(p is None for p in parts):
        return None
    return {k: v for p in parts if p for k, v in p.items()}


def _fmt(v) -> str:
    if v is None:
        return "not evaluated"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:.4g}"


def metrics_table(root: Path, method: str) -> str:
    base, safe = _metrics(root, BASE), _metrics(root, method)
    if base is None and safe is None:
        return ("Not evaluated: no `metrics/retrieval/` or `metrics/zeroshot/` files for this method or the base "
                "model. Run `dvc repro` to evaluate them.")
    rows = list(MAIN_METRICS)
    present = {**(base or {}), **(safe or {})}
    for key, label in ZEROSHOT_KEYS:
        if key in present:
            rows.append((key, label, "higher"))
            break
    name = BY_NAME[method].display
    lines = [f"| metric | better | base CLIP | {name} | Δ |", "|---|---|---|---|---|"]
    for key, label, better in rows:
        b, s = (base or {}).get(key), (safe or {}).get(key)
        delta = f"{s - b:+.4g}" if isinstance(b, int | float) and isinstance(s, int | float) else ""
        lines.append(f"| {label} (`{key}`) | {better} | {_fmt(b)} | {_fmt(s)} | {delta} |")
    notes = [f"{who}: not evaluated (no `metrics/retrieval/{m}.json` or `metrics/zeroshot/{m}.json`)"
             for who, m, d in (("base CLIP", BASE, base), (name, method, safe)) if d is None]
    text = "\n".join(lines)
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    text += ("\n\nRetrieval on the ViSU-style test split: t = safe caption, v = safe image, t* / v* = their unsafe "
             "counterparts; all values in % except GS.")
    return text


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _yaml(obj) -> str:
    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def model_card(method: str, params: Params, root: Path, commit: str, hidden_size: int,
               open_clip: dict[str, Any] | None) -> str:
    name = BY_NAME[method].display
    source = params.base_clip.source
    world = params.base.profile == "world" or source == "world"
    front: dict[str, Any] = {"library_name": "transformers", "tags": ["clip", "safety", method]}
    if source != "world":
        front["base_model"] = source
    parts = [f"---\n{_yaml(front)}\n---", f"# {name}: a made-safe CLIP"]
    if world:
        parts.append(
            "> **Warning: a tiny synthetic-world model.** This CLIP was trained and made safe on the pipeline's "
            "synthetic world (small rendered scenes and a word-level vocabulary; `base.profile: world`). It is a "
            "test artefact of the pipeline, **not usable for real images or real text**, and not a safety filter.")
    parts.append(BY_NAME[method].card)
    parts.append(f"- method: `{method}` (`params.make_safe.{method}`)\n- base CLIP: `{source}`"
                 + (f" (revision `{params.base_clip.revision}`)" if params.base_clip.revision else "")
                 + f"\n- profile: `{params.base.profile}`\n- git commit: `{commit}`")

    parts.append("## Metrics: " + name + " vs the base CLIP\n\n" + metrics_table(root, method))

    parts.append(f"## Parameters\n\n`make_safe.{method}`:\n\n```yaml\n"
                 f"{_yaml({method: getattr(params.make_safe, method).model_dump(mode='json')})}\n```\n\n"
                 f"`base` and `base_clip`:\n\n```yaml\n"
                 f"{_yaml({'base': params.base.model_dump(mode='json')})}\n"
                 f"{_yaml({'base_clip': params.base_clip.model_dump(mode='json', exclude={'world'})})}\n```")

    sd_note = ("" if hidden_size == SD_TEXT_WIDTH else
               f"\n\nNote: this text encoder is {hidden_size} wide; Stable Diffusion 1.x cross-attends to "
               f"{SD_TEXT_WIDTH}-wide states (CLIP ViT-L/14's text tower), so it only fits a pipeline whose UNet "
               f"was built for {hidden_size}.")
    usage = [
        "## How to load",
        "Paths are relative to this folder.",
        "Full CLIP (`clip/`):\n\n```python\nfrom transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel\n\n"
        'model = CLIPModel.from_pretrained("clip")\ntokenizer = AutoTokenizer.from_pretrained("clip")\n'
        'image_processor = CLIPImageProcessor.from_pretrained("clip")\n```',
        "Stable Diffusion text encoder (`text_encoder/` + `tokenizer/`, SD's own folder layout):\n\n```python\n"
        "from diffusers import StableDiffusionPipeline\nfrom transformers import AutoTokenizer, CLIPTextModel\n\n"
        'sd_id = "stable-diffusion-v1-5/stable-diffusion-v1-5"\npipe = StableDiffusionPipeline.from_pretrained(\n'
        '    sd_id,\n    text_encoder=CLIPTextModel.from_pretrained("text_encoder"),\n'
        '    tokenizer=AutoTokenizer.from_pretrained("tokenizer"),\n)\n```' + sd_note,
    ]
    if open_clip is not None:
        qg = ", force_quick_gelu=True" if open_clip["force_quick_gelu"] else ""
        usage.append(
            "open_clip (`open_clip_model.safetensors`, settings in `open_clip_config.json`):\n\n```python\n"
            "import open_clip\nfrom safetensors.torch import load_file\n\n"
            f'model = open_clip.create_model("{open_clip["arch"]}"{qg})\n'
            'model.load_state_dict(load_file("open_clip_model.safetensors"))\n'
            f'tokenizer = open_clip.get_tokenizer("{open_clip["arch"]}")\n```\n\n'
            f"Converted back from the HF model; base open_clip weights: `{open_clip['source'] or 'random init'}`.")
    else:
        usage.append("open_clip: no open_clip checkpoint is included: the base CLIP did not come from open_clip "
                     "(no `models/base_clip/open_clip.json`), so there is no open_clip architecture to export to.")
    parts.append("\n\n".join(usage))
    return "\n\n".join(parts) + "\n"


# --- the command ------------------------------------------------------------------------------------------------


def export(method: str, root: str | Path = ".", out: str | Path | None = None) -> Path:
    """Write the export folder for `method`; returns its path."""
    if method not in NAMES:
        raise InputError(f"unknown method {method!r} (one of {', '.join(NAMES)})")
    root = Path(root)
    out = Path(out) if out is not None else root / "exports" / method
    src = root / "models" / "safe" / method
    if not src.is_dir():
        raise InputError(f"{src}: the made-safe model folder does not exist; run `dvc repro make_safe@{method}` "
                         f"first (or `dvc pull` it)")
    params = load_params(root / "params.yaml")
    from safetensors.torch import save_file  # heavy imports after the cheap checks: errors come back fast

    from safeclip.clip.model import load_clip

    bundle = load_clip(src)
    oc_json = root / "models" / "base_clip" / "open_clip.json"
    oc_spec = None
    if oc_json.is_file():
        from safeclip.clip.open_clip_convert import hf_to_open_clip_state_dict

        info = read_metrics(oc_json)  # the same flat-JSON-object check
        if not info or not info.get("arch"):
            raise InputError(f"{oc_json}: no 'arch' field")
        oc_spec = open_clip_spec(bundle.model, info["arch"], info.get("pretrained"))
        oc_state = hf_to_open_clip_state_dict(bundle.model)
        _check_open_clip(oc_state, oc_spec)

    encoder = text_encoder(bundle.model)
    card = model_card(method, params, root, git_commit(root), bundle.model.config.text_config.hidden_size, oc_spec)
    with atomic_dir(out) as tmp:
        bundle.save(tmp / "clip")
        save_text_encoder(encoder, tmp / "text_encoder")
        bundle.tokenizer.save_pretrained(tmp / "tokenizer")
        if oc_spec is not None:
            save_file(oc_state, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
            write_json(tmp / "open_clip_config.json", oc_spec)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        mode = 0o666 & ~_umask()  # safetensors writes 0600 files: a shipped folder should be readable as usual
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(mode)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="safeclip", description="Tools around the safeclip DVC pipeline.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ex = sub.add_parser("export", help="ship a made-safe CLIP (HF CLIPModel, SD text encoder, open_clip, card)",
                        description="Export models/safe/<method> as a folder with clip/, text_encoder/ + tokenizer/ "
                                    "(Stable Diffusion layout), an open_clip checkpoint when the base came from "
                                    "open_clip, and a README.md model card.")
    ex.add_argument("--method", required=True, choices=NAMES)
    ex.add_argument("--root", default=".", help="the pipeline workspace (default: .)")
    ex.add_argument("--out", default=None, help="output folder (default: <root>/exports/<method>)")
    return ap


def _run(args: argparse.Namespace) -> None:
    if args.command == "export":
        out = export(args.method, args.root, args.out)
        print(f"exported {args.method} to {out}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    entry_point(functools.partial(_run, args))()


if __name__ == "__main__":
    main()
