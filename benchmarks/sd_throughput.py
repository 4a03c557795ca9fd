"""The world Stable Diffusion's costs: UNet training steps/s (and samples/s) at the default batch, and images/s
of the full pipeline (DDIM, classifier-free guidance) at batch 1 vs the eval_generation batch. Built from the
params' configs with random weights, so it runs before `base_sd` has trained anything.

    python benchmarks/sd_throughput.py [--steps 20] [--images 60] [--threads N] [--compile] [--channels-last]
                                       [--unet-channels 24 48] [--batch 64] [--skip-generation]

`--compile` (torch.compile, inductor: needs a C++ compiler) and `--channels-last` measure the training levers the
stage does not use; `--unet-channels` and `--batch` measure other UNet shapes without editing params.yaml.
"""

from __future__ import annotations

import argparse
import time

import torch

from safeclip.clip.model import build_world_clip, text_encoder
from safeclip.params import load_params
from safeclip.sd import models as sd_models
from safeclip.sd.pipeline import assemble


def unet_steps_per_second(unet, scheduler, batch_size: int, text_states: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    size, ch = unet.config.sample_size, unet.config.in_channels

    def step() -> None:
        x0 = torch.randn(batch_size, ch, size, size)
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,))
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text_states[:batch_size]).sample
        loss = torch.nn.functional.mse_loss(pred, scheduler.get_velocity(x0, noise, t))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def images_per_second(pipe, prompts: list[str], batch_size: int, num_inference_steps: int, guidance: float) -> float:
    pipe(prompts[:batch_size], num_inference_steps=2, guidance_scale=guidance)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        pipe(prompts[i:i + batch_size], num_inference_steps=num_inference_steps, guidance_scale=guidance,
             output_type="np")
    return len(prompts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--unet-channels", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--skip-generation", action="store_true")
    args = ap.parse_args()
    params = load_params()
    threads = args.threads or params.base.num_threads
    torch.set_num_threads(threads)
    w, g = params.base_sd.world, params.eval_generation
    unet_cfg = w.unet.model_copy(update={k: v for k, v in (("block_out_channels", args.unet_channels),
                                                            ("batch_size", args.batch)) if v is not None})
    clip = build_world_clip(params.base_clip.world, params.world.image_size)
    encoder = text_encoder(clip.model)
    vae = sd_models.build_vae(w.vae, params.world.image_size)
    unet = sd_models.build_unet(unet_cfg, sd_models.latent_size(w.vae, params.world.image_size),
                                w.vae.latent_channels, encoder.config.hidden_size)
    sched = sd_models.train_scheduler(w)
    batch = unet_cfg.batch_size
    states = torch.randn(batch, clip.tokenizer.model_max_length, encoder.config.hidden_size)
    trained = unet
    if args.channels_last:
        trained = trained.to(memory_format=torch.channels_last)
    if args.compile:
        start = time.perf_counter()
        trained = torch.compile(trained)
        unet_steps_per_second(trained, sched, batch, states, 1)
        print(f"torch.compile: first steps {time.perf_counter() - start:.1f} s")
    sps = unet_steps_per_second(trained, sched, batch, states, args.steps)
    print(f"threads={threads} unet params={sum(p.numel() for p in unet.parameters()):,} channels "
          f"{unet_cfg.block_out_channels} compile={args.compile} channels_last={args.channels_last}")
    print(f"UNet training: {sps:6.2f} steps/s at batch {batch} ({sps * batch:7.1f} samples/s); "
          f"{unet_cfg.steps} steps = {unet_cfg.steps / sps / 60:5.1f} min")
    if args.skip_generation:
        return
    pipe = assemble(vae, unet.eval(), encoder, clip.tokenizer, sd_models.sample_scheduler(sched))
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle on the left on a blue background"] * args.images
    with torch.no_grad():
        one = images_per_second(pipe, prompts[: max(4, args.images // 10)], 1, g.num_inference_steps,
                                g.guidance_scale)
        many = images_per_second(pipe, prompts, g.batch_size, g.num_inference_steps, g.guidance_scale)
    print(f"generation ({g.num_inference_steps} DDIM steps, guidance {g.guidance_scale}): batch 1 {one:6.1f} images/s, "
          f"batch {g.batch_size} {many:6.1f} images/s ({many / one:4.1f}x)")


if __name__ == "__main__":
    main()
