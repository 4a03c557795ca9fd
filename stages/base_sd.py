"""base_sd: world -> train a tiny Stable Diffusion (VAE, then a UNet on the frozen base CLIP text tower) on world
renders -> models/base_sd (a StableDiffusionPipeline folder); paper -> resolve the pipeline id or path."""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.clip.model import load_clip, text_encoder
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.data.captions import render_config
from safeclip.data.schemas import CAPTIONS
from safeclip.hub import resolve_model_dir, write_pointer
from safeclip.io import InputError, atomic_dir, read_parquet, write_metrics, write_plot_csv
from safeclip.runtime import scaled
from safeclip.sd import models as sd_models
from safeclip.sd import train as sd_train
from safeclip.sd.pipeline import BASE_SD, assemble
from safeclip.stage import entry_point, run_stage, start
from safeclip.world.scene import Scene

CKPT = Path("checkpoints/base_sd")
TEST = "data/captions/test.parquet"


def held_out_scenes(path: str) -> list[Scene]:
    """The test scenes and their unsafe twins: never drawn in training, so evaluation prompts are unseen."""
    scenes = []
    for i, row in enumerate(read_parquet(path, CAPTIONS).to_pylist()):
        if not row["scene"]:
            raise InputError(f"{path}: row {i}: field 'scene' is empty (the world needs every scene)")
        s = Scene.from_json(row["scene"])
        scenes += [s, s.unsafe_twin()]
    return scenes


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / torch.mean((a - b) ** 2)))  # images in [-1, 1]


@entry_point
def main() -> None:
    params, log = start("base_sd")
    cfg = params.base_sd
    if cfg.source != "world":
        path = resolve_model_dir(cfg.source, cfg.revision, param="base_sd.source")
        if not (path / "model_index.json").exists():
            raise InputError(f"base_sd.source: {cfg.source}: no model_index.json in {path}: not a diffusers pipeline "
                             "folder (point base_sd.source at one, e.g. CompVis/stable-diffusion-v1-4)")
        with atomic_dir(BASE_SD) as out:
            write_pointer(out, cfg.source, cfg.revision, path)
        write_metrics("metrics/base_sd.json", {"base_sd.unet_steps": 0})
        write_plot_csv("plots/base_sd.csv", [])
        write_plot_csv("plots/base_sd_vae.csv", [])  # dvc.yaml declares it in every profile
        log.info("base SD: %s -> %s", cfg.source, path)
        return
    if params.captions.source != "world":
        raise InputError("base_sd.source: 'world' trains on world renders; with captions.source "
                         f"'{params.captions.source}' point it at a diffusers pipeline (CompVis/stable-diffusion-v1-4)")
    w, seed, size = cfg.world, params.base.seed, params.world.image_size
    held_out = held_out_scenes(TEST)
    scenes = sd_train.training_scenes(held_out, params.world.positions)
    if params.base.scale < 1:  # CI: a seeded subset of the scenes, the same code path
        keep = np.random.default_rng([seed, 8]).permutation(len(scenes))[:scaled(len(scenes), params.base.scale, 64)]
        scenes = [scenes[i] for i in sorted(keep)]
    rcfg = dataclasses.replace(render_config(params.world), noise_std=w.render_noise_std)
    images, labels, captions = sd_train.render_pool(scenes, w.renders_per_scene, rcfg, seed)
    log.info("training pool: %d renders of %d scenes (%d held-out scenes excluded)", len(images), len(scenes),
             len(set(held_out)))
    common = (params.base.model_dump(), params.world.model_dump(), w.renders_per_scene, file_digest(TEST))

    torch.manual_seed(seed)
    vae = sd_models.build_vae(w.vae, size)
    vae_steps = scaled(w.vae.steps, params.base.scale, 10)
    acc = make_accelerator(params.base)
    state = TrainState(acc, CKPT / "vae", fingerprint("base_sd.vae", w.vae.model_dump(), *common), log)
    vae_curve = sd_train.train_vae(vae, images, w.vae, vae_steps, seed, acc, state, log)
    vae = acc.unwrap_model(vae).cpu()
    latents = sd_train.encode_latents(vae, images)
    scaling = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=scaling)

    held = sd_train.render_pool(sorted(set(held_out), key=lambda s: s.to_json())[:256], 1, rcfg, seed + 1)[0]
    with torch.no_grad():
        x = sd_train.to_unit_range(held)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    held_psnr = psnr(recon, x)
    log.info("VAE: %d steps, held-out PSNR %.1f dB, latent std %.3f", vae_steps, held_psnr, 1 / scaling)

    clip = load_clip("models/base_clip")
    encoder = text_encoder(clip.model)
    states = sd_train.encode_prompts(clip.tokenizer, encoder, [*captions, ""])
    torch.manual_seed(seed)
    unet = sd_models.build_unet(w.unet, sd_models.latent_size(w.vae, size), w.vae.latent_channels,
                                encoder.config.hidden_size)
    scheduler = sd_models.train_scheduler(w)
    unet_steps = scaled(w.unet.steps, params.base.scale, 10)
    acc = make_accelerator(params.base)
    fp = fingerprint("base_sd.unet", w.model_dump(), *common, file_digest("models/base_clip"), vae_steps)
    state = TrainState(acc, CKPT / "unet", fp, log)
    unet, unet_curve = sd_train.train_unet(unet, latents * scaling, labels, states[:-1], states[-1], scheduler,
                                           w.unet, unet_steps, seed, acc, state, log,
                                           weight_maps=sd_train.object_weight_maps(scenes, latents.shape[-1],
                                                                                   w.unet.object_weight))
    pipe = assemble(vae, unet.cpu(), encoder, clip.tokenizer, sd_models.sample_scheduler(scheduler))
    with atomic_dir(BASE_SD) as out:
        pipe.save_pretrained(out, safe_serialization=True)
    write_metrics("metrics/base_sd.json", {
        "base_sd.vae_steps": vae_steps, "base_sd.unet_steps": unet_steps, "base_sd.train_images": len(images),
        "base_sd.vae.held_out_psnr": held_psnr, "base_sd.vae.params": sum(p.numel() for p in vae.parameters()),
        "base_sd.unet.params": sum(p.numel() for p in unet.parameters()),
        "base_sd.unet.final_loss": float(np.mean([r["loss"] for r in unet_curve[-5:]]))})
    write_plot_csv("plots/base_sd.csv", [{"step": r["step"], "unet_loss": r["loss"]} for r in unet_curve])
    write_plot_csv("plots/base_sd_vae.csv", [{"step": r["step"], "vae_psnr": r["psnr"]} for r in vae_curve])
    log.info("UNet: %d steps, final loss %.4f -> models/base_sd", unet_steps, unet_curve[-1]["loss"])


if __name__ == "__main__":
    run_stage(main)
