"""Training the world's tiny Stable Diffusion: a VAE on renders, then a UNet on frozen latents and text states.

Both loops draw every random number (batch, timesteps, noise, prompt drop, VAE sample) from a generator seeded
by (seed, step), so a run resumed from a checkpoint sees exactly what an uninterrupted run would have seen.
Latents and text states are computed once before the UNet loop: the loop is then pure UNet compute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from safeclip.clip.training import TrainState, check_finite, global_batch, lr_factor
from safeclip.params import WorldUnet, WorldVae
from safeclip.world.catalogue import OBJECTS
from safeclip.world.grammar import caption
from safeclip.world.render import RenderConfig, render
from safeclip.world.scene import Scene, enumerate_scenes


def training_scenes(held_out: Sequence[Scene], positions: Sequence[str]) -> list[Scene]:
    """Every one-object world scene except the held-out ones (the test scenes and their unsafe twins), so the
    evaluation prompts are never captions the generator was trained on; at the world's positions only."""
    skip = {s.canonical() for s in held_out}
    return [s for s in enumerate_scenes(tuple(OBJECTS), positions) if s not in skip]


def render_pool(scenes: Sequence[Scene], renders_per_scene: int, rcfg: RenderConfig,
                seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images [N, H, W, 3], the caption index of each, and the captions (one per scene)."""
    from safeclip.data.captions import stable_seed

    n = len(scenes) * renders_per_scene
    images = np.empty((n, rcfg.image_size, rcfg.image_size, 3), np.uint8)
    labels = np.repeat(np.arange(len(scenes)), renders_per_scene)
    for i, scene in enumerate(scenes):
        for r in range(renders_per_scene):
            images[i * renders_per_scene + r] = render(scene, stable_seed(seed, "base_sd", i, r), rcfg)
    return images, labels, [caption(s) for s in scenes]


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], the range diffusers' VAE decodes to."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def train_vae(vae, images: np.ndarray, cfg: WorldVae, steps: int, seed: int, accelerator, state: TrainState,
              log: logging.Logger) -> list[dict]:
    """MSE + L1 reconstruction with a small KL term (a near-deterministic autoencoder the UNet can model)."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    vae, opt = accelerator.prepare(vae, opt)
    progress = state.load() or {"step": 0, "curve": []}
    curve = progress["curve"]
    vae.train()
    bar = tqdm(range(progress["step"], steps), desc="base_sd vae", mininterval=10,
               disable=not accelerator.is_main_process)
    for step in bar:
        idx = global_batch(step, len(images), cfg.batch_size, [seed, 1])
        x = to_unit_range(images[idx]).to(accelerator.device)
        posterior = vae.encode(x).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=_step_generator(seed, step)).to(x.device)
        z = posterior.mean + posterior.std * eps
        recon = vae.decode(z).sample
        mse, l1 = F.mse_loss(recon, x), F.l1_loss(recon, x)
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + cfg.l1_weight * l1 + cfg.kl_weight * kl
        check_finite(loss, step, {"mse": mse, "l1": l1, "kl": kl})
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(float(mse.detach()), 1e-12))  # range [-1, 1]: peak-to-peak 2
            curve.append({"step": step + 1, "loss": float(loss.detach()), "psnr": psnr, "kl": float(kl.detach())})
            bar.set_postfix(psnr=f"{psnr:.1f}", refresh=False)
        if (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            state.save({"step": step + 1, "curve": curve})
            log.info("vae step %d/%d: loss %.4f (checkpoint saved)", step + 1, steps, float(loss.detach()))
    vae.eval()
    return curve


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Posterior means (unscaled): deterministic, and the KL term keeps the posterior std tiny anyway."""
    out = [vae.encode(to_unit_range(images[i:i + batch_size]).to(vae.device)).latent_dist.mean.cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Text states exactly as StableDiffusionPipeline computes them: padded to the tokenizer's max length, no
    attention mask unless the encoder's config asks for one, last hidden state."""
    states = []
    for i in range(0, len(prompts), batch_size):
        tok = tokenizer(list(prompts[i:i + batch_size]), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(text_encoder.device) if getattr(text_encoder.config, "use_attention_mask",
                                                                     False) else None
        states.append(text_encoder(tok.input_ids.to(text_encoder.device), attention_mask=mask)[0].float().cpu())
    return torch.cat(states)


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float | None,
                keep_low_snr: bool = False) -> torch.Tensor | None:
    """min-SNR-gamma weights for a v-prediction loss, min(snr, gamma) / (snr + 1); None for plain MSE.

    min-SNR also down-weights the noisiest steps, where the layout (background, position) is decided: in the
    world that cost most of the background and position accuracy. `keep_low_snr` keeps weight 1 there and
    only caps the easy, nearly clean steps: min(1, gamma / (snr + 1)). At the zero-SNR terminal step plain
    min-SNR would be 0; it keeps weight 1 (diffusers' convention for zero-terminal SNR)."""
    if gamma is None:
        return None
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = ac / (1 - ac).clamp_min(1e-12)
    g = torch.full_like(snr, gamma)
    if keep_low_snr:
        denom = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr.clamp_min(1e-12)
        return torch.minimum(torch.ones_like(snr), g / denom)
    if scheduler.config.prediction_type == "v_prediction":
        w = torch.minimum(snr, g) / (snr + 1)
    else:
        w = torch.minimum(snr, g) / snr.clamp_min(1e-12)
    return torch.where(snr == 0, torch.ones_like(w), w)


def object_weight_maps(scenes: Sequence[Scene], latent_size: int, weight: float) -> torch.Tensor | None:
    """[n_scenes, 1, h, w] per-position loss weights: `weight` over each object's grid cell, 1 elsewhere, each map
    scaled to mean 1 (so the learning rate keeps its meaning); None when weight is 1 (plain MSE)."""
    if weight == 1:
        return None
    from safeclip.world.catalogue import POSITIONS

    maps = torch.ones(len(scenes), 1, latent_size, latent_size)
    cell = latent_size / 3
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            col, row = POSITIONS[o.position]
            y0, y1 = math.floor(row * cell), math.ceil((row + 1) * cell)
            x0, x1 = math.floor(col * cell), math.ceil((col + 1) * cell)
            maps[i, 0, y0:y1, x0:x1] = weight
    return maps / maps.mean(dim=(1, 2, 3), keepdim=True)


def sample_timesteps(n: int, n_t: int, cfg: WorldUnet, gen: torch.Generator) -> torch.Tensor:
    """Integer timesteps in [0, n_t): uniform, or logit-normal (sigmoid of a normal, scaled to n_t)."""
    if cfg.timestep_sampling == "uniform":
        return torch.randint(0, n_t, (n,), generator=gen)
    u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
    return (u * n_t).long().clamp_(0, n_t - 1)


def train_unet(unet, latents: torch.Tensor, caption_index: np.ndarray, text_states: torch.Tensor,
               empty_state: torch.Tensor, scheduler, cfg: WorldUnet, steps: int, seed: int, accelerator,
               state: TrainState, log: logging.Logger,
               probe: Callable[[int, torch.nn.Module, object], None] | None = None, probe_every: int = 0,
               weight_maps: torch.Tensor | None = None):
    """v- (or epsilon-) prediction MSE, 10% empty prompts for classifier-free guidance, EMA weights.

    `latents` are already scaled by the VAE's scaling factor; `weight_maps` [n_captions, 1, h, w] (see
    object_weight_maps) weigh the squared error per latent position. Returns (the EMA UNet, the curve).
    `probe(step, unet, ema)` is called every `probe_every` steps and at the end (benchmarks/sd_curve.py scores
    the EMA weights there, to choose the stopping point from a curve)."""
    from diffusers.training_utils import EMAModel

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.lr_schedule, steps, cfg.warmup_steps))
    unet, opt = accelerator.prepare(unet, opt)
    accelerator.register_for_checkpointing(sched)  # not prepared: accelerate would step it once per process
    raw = accelerator.unwrap_model(unet)
    ema = EMAModel(raw.parameters(), decay=cfg.ema_decay, model_cls=type(raw), model_config=raw.config)
    accelerator.register_for_checkpointing(ema)
    progress = state.load() or {"step": 0, "curve": []}
    curve = progress["curve"]
    device = accelerator.device
    ema.to(device)
    n_t = scheduler.config.num_train_timesteps
    unet.train()
    bar = tqdm(range(progress["step"], steps), desc="base_sd unet", mininterval=10,
               disable=not accelerator.is_main_process)
    for step in bar:
        gen = _step_generator(seed, step)
        idx = global_batch(step, len(latents), cfg.batch_size, [seed, 2])
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = sample_timesteps(len(idx), n_t, cfg, gen)
        cond = text_states[caption_index[idx]].clone()
        cond[torch.rand(len(idx), generator=gen) < cfg.cond_drop] = empty_state
        x0, noise, t, cond = x0.to(device), noise.to(device), t.to(device), cond.to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        err = F.mse_loss(pred.float(), target.float(), reduction="none")
        if weight_maps is not None:
            err = err * weight_maps[caption_index[idx]].to(device)
        per_sample = err.mean(dim=(1, 2, 3))
        w = snr_weights(scheduler, t, cfg.snr_gamma, cfg.snr_keep_low)
        loss = per_sample.mean() if w is None else (per_sample * w).mean()
        check_finite(loss, step, {"mse": per_sample.mean()})
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(raw.parameters())
        if step % 20 == 0 or step == steps - 1:
            curve.append({"step": step + 1, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        if (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            state.save({"step": step + 1, "curve": curve})
            log.info("unet step %d/%d: loss %.4f (checkpoint saved)", step + 1, steps, float(loss.detach()))
        if probe is not None and ((probe_every and (step + 1) % probe_every == 0) or step + 1 == steps):
            probe(step + 1, raw, ema)
    unet.eval()
    ema.copy_to(raw.parameters())
    return raw, curve
