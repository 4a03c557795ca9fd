"""eval_generation@<model>: Stable Diffusion with its text encoder replaced by the model's text tower, judged ->
metrics/generation/<model>.json, data/generation/<model>/ (every image with its judgments, and a grid PNG).

`none` is the base CLIP's text tower, i.e. the unmodified generator. Every model draws the same prompts with
the same initial noise, so rates differ only by the text tower.
"""

from pathlib import Path

import pyarrow as pa

from safeclip.checkpoint import file_digest, fingerprint, prepare_checkpoint_dir
from safeclip.clip.model import encode_images, encode_texts, load_clip, text_encoder
from safeclip.data.schemas import VISU
from safeclip.eval.embed import model_path
from safeclip.eval.generation import generation_metrics, read_i2p, visu_prompts
from safeclip.eval.judges import build_panel, flag_images
from safeclip.io import InputError, atomic_dir, read_parquet, write_metrics, write_parquet
from safeclip.methods.registry import BASE
from safeclip.runtime import compute_device, scaled
from safeclip.sd.pipeline import BASE_SD, DTYPES, load_pipeline, swap_text_encoder, text_width, unet_width, use_sampler
from safeclip.sd.sample import decode_png, generate, image_grid, jobs, png_bytes
from safeclip.stage import entry_point, option, run_stage, start
from safeclip.world.catalogue import SAFE_TWIN
from safeclip.world.scene import Scene

TEST = "data/visu/test.parquet"
IMAGES = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("concepts", pa.list_(pa.string()), nullable=False),
    pa.field("k", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("png", pa.binary(), nullable=False),
    pa.field("inappropriate", pa.bool_(), nullable=False),
    pa.field("flags", pa.string(), nullable=False),  # the judges that flagged it, comma-separated
    pa.field("clip_score", pa.float32(), nullable=True),
    pa.field("judged_object", pa.string(), nullable=True),  # world judge
])


def world_checks(scene_json: str | None, kind: str, pred: dict, i: int) -> dict:
    """Did the world judge see the prompt's object, colour, position, background (and, for an unsafe prompt,
    its safe twin instead)?"""
    if not scene_json:
        return {}
    obj = Scene.from_json(scene_json).objects[0]
    bg = Scene.from_json(scene_json).background
    ok = {"object": pred["object"][i] == obj.name, "colour": pred["colour"][i] == obj.colour,
          "position": pred["position"][i] == obj.position, "background": pred["background"][i] == bg}
    ok["all"] = all(ok.values())
    ok["safe_twin"] = pred["object"][i] == SAFE_TWIN.get(obj.name) if kind == "unsafe" else None
    return {f"ok.{k}": v for k, v in ok.items()}


def skip(name: str, got: int, want: int, log) -> None:
    """The documented rule (README, "Run the paper setup"): a text tower of another width than the UNet's
    cross-attention cannot drive it (e.g. open_clip ViT-B/32, 512, with SD v1.4, 768), so text-to-image evaluation
    is skipped, with a SKIPPED marker, `gen.skipped` in the metrics and a note in the report, and every other
    stage of the comparison still runs."""
    why = (f"text-to-image evaluation skipped: the text tower of {model_path(name)} has width {got}, but the UNet "
           f"of models/base_sd (base_sd.source) has cross-attention width {want}; use a base CLIP of the family the "
           "UNet was trained with (ViT-L/14 for SD v1.x) to evaluate generation")
    log.warning("%s: %s", name, why)
    with atomic_dir(Path("data/generation") / name) as out:
        (out / "SKIPPED").write_text(why + "\n")
    write_metrics(f"metrics/generation/{name}.json", {"gen.skipped": 1})


@entry_point
def main() -> None:
    name = option("model")
    params, log = start(f"eval_generation@{name}")
    cfg, seed = params.eval_generation, params.base.seed
    device = compute_device(params.base.device)
    rows = [r for r in read_parquet(TEST, VISU).to_pylist() if r["nsfw"]]
    if not rows:
        raise InputError(f"{TEST}: no row has an unsafe caption; nothing to prompt with")
    prompts = visu_prompts(rows, scaled(cfg.n_unsafe_prompts, params.base.scale, 4),
                           scaled(cfg.n_safe_prompts, params.base.scale, 4), seed)
    if cfg.i2p_csv:
        prompts += read_i2p(cfg.i2p_csv, cfg.i2p_max_prompts)
    work = jobs(prompts, cfg.seeds, cfg.images_per_prompt)

    bundle = load_clip(model_path(name))
    pipe = use_sampler(load_pipeline(BASE_SD, DTYPES[cfg.dtype]), cfg.sampler)
    tower = text_encoder(bundle.model)
    if text_width(tower) != unet_width(pipe.unet):
        skip(name, text_width(tower), unet_width(pipe.unet), log)
        return
    # Every judge before the first image: a judge that cannot load fails in seconds, not after hours of sampling.
    panel = build_panel(params.judge, params.captions.source, device)
    pipe = swap_text_encoder(pipe, tower, bundle.tokenizer, str(model_path(name)))
    pipe.to(device)
    ckpt = Path("checkpoints/eval_generation") / name
    fp = fingerprint("eval_generation", cfg.model_dump(), params.base.model_dump(), file_digest(BASE_SD),
                     file_digest(model_path(name)), file_digest(TEST),
                     file_digest(cfg.i2p_csv) if cfg.i2p_csv else None)
    prepare_checkpoint_dir(ckpt, fp, log)
    log.info("%s: %d images (%d prompts), %d denoising steps, guidance %.1f", name, len(work), len(prompts),
             cfg.num_inference_steps, cfg.guidance_scale)
    generated = generate(pipe, work, cfg.batch_size, ckpt / "shards", num_inference_steps=cfg.num_inference_steps,
                         guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
                         height=cfg.height, width=cfg.width, log=log, desc=f"eval_generation@{name}")
    del pipe
    images = [decode_png(g["png"]) for g in generated]

    flags = {j.name: flag_images(j, images) for j in panel}
    world = next((j for j in panel if j.name == "world"), None)
    pred = world.predict(images) if world is not None else None

    base = load_clip(model_path(BASE))  # CLIP-score with the unmodified CLIP, the same yardstick for every model
    refs = [p.reference for p, _, _ in work]
    with_ref = [i for i, r in enumerate(refs) if r]
    scores: list[float | None] = [None] * len(work)
    if with_ref:
        img = encode_images(base, [images[i] for i in with_ref], params.evaluate.batch_size)
        txt = encode_texts(base, [refs[i] for i in with_ref], params.evaluate.batch_size)
        cos = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
        for i, c in zip(with_ref, cos.tolist(), strict=True):
            scores[i] = 100.0 * max(c, 0.0)  # CLIPScore (Hessel et al. 2021) without its 2.5 rescaling

    records, out_rows = [], []
    for i, ((p, k, s), g) in enumerate(zip(work, generated, strict=True)):
        f = {f"flag.{j}": bool(v[i]) for j, v in flags.items()}
        rec = {"kind": p.kind, "concepts": p.concepts, "clip_score": scores[i], **f}
        if pred is not None:
            rec.update(world_checks(p.scene, p.kind, pred, i))
        records.append(rec)
        out_rows.append({"prompt_id": p.id, "kind": p.kind, "prompt": p.text, "concepts": list(p.concepts), "k": k,
                         "seed": s, "png": g["png"], "inappropriate": any(f.values()),
                         "flags": ",".join(j for j in flags if f[f"flag.{j}"]), "clip_score": scores[i],
                         "judged_object": None if pred is None else str(pred["object"][i])})
    metrics = generation_metrics(records, list(flags))

    # The grid: the first grid_prompts unsafe prompts (top row) over their safe twins (bottom row), image k=0.
    first = {(p.id, k): images[i] for i, (p, k, _) in enumerate(work)}
    unsafe_ids = [p.id for p in prompts if p.kind == "unsafe"][:cfg.grid_prompts]
    grid_rows = [[first[(pid, 0)] for pid in unsafe_ids]]
    twins = [pid.replace(":unsafe", ":safe") for pid in unsafe_ids]
    if all((t, 0) in first for t in twins):
        grid_rows.append([first[(t, 0)] for t in twins])
    with atomic_dir(Path("data/generation") / name) as out:
        write_parquet(out / "images.parquet", out_rows, IMAGES)
        (out / "grid.png").write_bytes(png_bytes(image_grid(grid_rows)))
    write_metrics(f"metrics/generation/{name}.json", metrics)
    shown = {k: round(v, 1) for k, v in metrics.items() if k.endswith(("inappropriate", "clip_score", "drew.object"))}
    log.info("%s: %s", name, shown)


if __name__ == "__main__":
    run_stage(main)
