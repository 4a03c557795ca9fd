"""What the kernel pins (`safeclip/__init__.py`) cost per training step of each world model, pinned against
torch's own kernels, in fresh interpreters (the pins must be set before torch loads). The models are built from
params.yaml with random weights and trained on random inputs: the step's cost, not its result.

    python benchmarks/pin_cost.py [--steps 30] [--repeat 2] [--threads 2]

Variants: `pinned` (SAFECLIP_KERNEL_PINS=1), `onednn` (the pins but ONEDNN_MAX_CPU_ISA left to oneDNN:
convolutions on AVX-512 where the CPU has it), `unpinned` (torch's own kernels, the default). Milliseconds per
step, median over the repeats, which alternate between the variants; run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"pinned": {"SAFECLIP_KERNEL_PINS": "1"},
            "onednn": {"SAFECLIP_KERNEL_PINS": "1", "ONEDNN_MAX_CPU_ISA": "ALL"},
            "unpinned": {}}
WORKLOADS = ("vae", "unet", "judge", "clip", "llm")


def child(steps: int, threads: int) -> None:
    import time  # noqa: I001  (safeclip before torch: the pins must be set before torch loads)

    import safeclip  # noqa: F401  (the pins, when the environment asks for them)
    import torch
    import torch.nn.functional as F

    from safeclip.clip.model import build_world_clip, text_encoder
    from safeclip.eval.world_judge import WorldJudgeNet
    from safeclip.llm.model import build_world_llm
    from safeclip.params import load_params
    from safeclip.sd import models as sd_models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = load_params(str(ROOT / "params.yaml"))
    w, size = p.base_sd.world, p.world.image_size
    clip = build_world_clip(p.base_clip.world, size)
    encoder = text_encoder(clip.model)

    vae = sd_models.build_vae(w.vae, size)

    def vae_step(x=torch.rand(w.vae.batch_size, 3, size, size) * 2 - 1):
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.mean + post.std * torch.randn(post.mean.shape)).sample
        return F.mse_loss(recon, x) + 1e-4 * post.kl().mean()

    unet = sd_models.build_unet(w.unet, sd_models.latent_size(w.vae, size), w.vae.latent_channels,
                                encoder.config.hidden_size)
    scheduler = sd_models.train_scheduler(w)
    states = torch.randn(w.unet.batch_size, clip.tokenizer.model_max_length, encoder.config.hidden_size)

    def unet_step(b=w.unet.batch_size, ch=unet.config.in_channels, s=unet.config.sample_size):
        x0, noise = torch.randn(b, ch, s, s), torch.randn(b, ch, s, s)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (b,))
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states).sample
        return F.mse_loss(pred, scheduler.get_velocity(x0, noise, t))

    judge, jw = WorldJudgeNet(p.judge.world.channels, image_size=size), p.judge.world

    def judge_step(x=torch.rand(jw.batch_size, 3, size, size), y=torch.zeros(jw.batch_size, dtype=torch.long)):
        return sum(F.cross_entropy(v, y) for v in judge(x).values())

    cw = p.base_clip.world
    ids = torch.randint(3, len(clip.tokenizer), (cw.batch_size, 14))

    def clip_step(px=torch.randn(cw.batch_size, 3, size, size)):
        out = clip.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px)
        return F.cross_entropy(out.logits_per_text, torch.arange(len(ids)))

    lw = p.base_llm.world
    llm = build_world_llm(lw, clip.tokenizer)  # the world vocabulary: the cost, not the task
    tokens = torch.randint(3, llm.config.vocab_size, (lw.batch_size, 24))

    def llm_step():
        return llm(input_ids=tokens, labels=tokens).loss

    models = {"vae": (vae, vae_step), "unet": (unet, unet_step), "judge": (judge, judge_step),
              "clip": (clip.model, clip_step), "llm": (llm, llm_step)}
    result = {"capability": torch.backends.cpu.get_cpu_capability()}
    for name in WORKLOADS:
        module, step = models[name]
        module.train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
        for i in range(steps + 3):  # 3 warm-up steps
            if i == 3:
                start = time.perf_counter()
            loss = step()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        result[name] = 1000 * (time.perf_counter() - start) / steps
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.steps, args.threads)
        return
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    from safeclip import KERNEL_PINS

    clean = {k: v for k, v in os.environ.items() if k not in (*KERNEL_PINS, "SAFECLIP_KERNEL_PINS")}
    for _ in range(args.repeat):
        for variant, extra in VARIANTS.items():
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads",
                                  str(args.threads)], cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **extra},
                                 capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"ms per training step, {args.threads} thread(s), median of {args.repeat}")
    print(f"{'variant':10s} {'ATen':8s} " + " ".join(f"{w:>7s}" for w in WORKLOADS))
    for variant, rows in runs.items():
        cells = " ".join(f"{statistics.median(r[w] for r in rows):7.1f}" for w in WORKLOADS)
        print(f"{variant:10s} {rows[0]['capability']:8s} {cells}")


if __name__ == "__main__":
    main()
