"""Images of clean and attacked prompts at the headline budget: does the attack bring unsafe images back?

Stable Diffusion gets the attacked model's text tower, as in eval_generation, and every variant of a prompt
(clean, free attack, banned-word attack) starts from the same initial noise, so the judges' rates differ only by
the prompt's text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from safeclip.clip.model import ClipBundle, text_encoder
from safeclip.eval.attack_suite import MODES, Picked, SuiteResult
from safeclip.eval.generation import Prompt, generation_metrics, image_seed
from safeclip.eval.judges import build_panel, flag_images
from safeclip.io import write_json, write_parquet
from safeclip.params import Params
from safeclip.sd.pipeline import BASE_SD, DTYPES, load_pipeline, swap_text_encoder, text_width, unet_width, use_sampler
from safeclip.sd.sample import decode_png, generate, image_grid, png_bytes

IMAGES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("png", pa.binary(), nullable=False),
    pa.field("inappropriate", pa.bool_(), nullable=False),
    pa.field("flags", pa.string(), nullable=False),
])


def variants(budget: int) -> list[str]:
    return ["clean", *(f"{mode}.k{budget}" for mode in MODES)]


def attack_work(picked: Picked, suite: SuiteResult, n: int, budget: int, seed: int) -> list[tuple[Prompt, int, int]]:
    """(prompt, k, seed) per image: every variant of a quadruple shares its seed."""
    work = []
    for i, (pid, tag) in enumerate(zip(picked.ids[:n], picked.tags[:n], strict=True)):
        s = image_seed(seed, f"{pid}:attack", 0)
        for v in variants(budget):
            work.append((Prompt(f"{pid}:{v}", suite.prompts[v][i], v, (tag,)), 0, s))
    return work


def draw_and_judge(bundle: ClipBundle, model_dir: str, suite: SuiteResult, picked: Picked, n: int, params: Params,
                   device: str, shard_dir: Path, log: logging.Logger) -> tuple[dict[str, float], list[dict] | None]:
    """`attack.gen.<variant>.*` rates and the image rows; `attack.gen.skipped` when the tower cannot drive the UNet."""
    gen = params.eval_generation
    pipe = use_sampler(load_pipeline(BASE_SD, DTYPES[gen.dtype]), gen.sampler)
    tower = text_encoder(bundle.model)
    if text_width(tower) != unet_width(pipe.unet):
        log.warning("attack images skipped: text width %d, UNet cross-attention width %d (see eval_generation)",
                    text_width(tower), unet_width(pipe.unet))
        return {"attack.gen.skipped": 1}, None
    panel = build_panel(params.judge, params.captions.source, device)
    pipe = swap_text_encoder(pipe, tower, bundle.tokenizer, model_dir).to(device)
    work = attack_work(picked, suite, n, params.eval_attack.budget, params.base.seed)
    generated = generate(pipe, work, gen.batch_size, shard_dir, num_inference_steps=gen.num_inference_steps,
                         guidance_scale=gen.guidance_scale, guidance_rescale=gen.guidance_rescale,
                         height=gen.height, width=gen.width, log=log, desc="eval_attack images")
    del pipe
    images = [decode_png(g["png"]) for g in generated]
    flags = {j.name: flag_images(j, images) for j in panel}
    records = [{"kind": p.kind, "concepts": p.concepts, **{f"flag.{j}": bool(v[i]) for j, v in flags.items()}}
               for i, (p, _, _) in enumerate(work)]
    metrics = {f"attack.{k}": v for k, v in generation_metrics(records, list(flags)).items()}
    rows = [{"id": p.id.rsplit(":", 1)[0], "variant": p.kind, "prompt": p.text, "seed": s, "png": g["png"],
             "inappropriate": any(r[f"flag.{j}"] for j in flags),
             "flags": ",".join(j for j in flags if r[f"flag.{j}"])}
            for (p, _, s), g, r in zip(work, generated, records, strict=True)]
    return metrics, rows


def write_images(out: Path, rows: Sequence[dict], n_examples: int) -> None:
    """images.parquet (every image with its judgments), and for the report: grid.png (one column per example
    quadruple; rows clean, free attack, banned-word attack) and examples.json (the prompts and verdicts behind
    it), so that the report reads bytes and JSON, never images."""
    write_parquet(out / "images.parquet", list(rows), IMAGES)
    ids = list(dict.fromkeys(r["id"] for r in rows))[:n_examples]
    by_key = {(r["id"], r["variant"]): r for r in rows}
    kinds = list(dict.fromkeys(r["variant"] for r in rows))
    grid = image_grid([[decode_png(by_key[(i, v)]["png"]) for i in ids] for v in kinds])
    (out / "grid.png").write_bytes(png_bytes(grid))
    examples = [{"id": i, **{v: {"prompt": by_key[(i, v)]["prompt"], "inappropriate": by_key[(i, v)]["inappropriate"]}
                             for v in kinds}} for i in ids]
    write_json(out / "examples.json", {"variants": kinds, "examples": examples})
