"""The world generator's quality against UNet steps: where base_sd's curve flattens, so its step count is chosen.

    python benchmarks/sd_curve.py --repo . --steps 1500 --every 250 [--set base_sd.world.unet.learning_rate=3e-3]
                                  [--vae-cache /tmp/sd_vae] [--prompts 120] [--threads 2] [--out curve.csv]

Needs `models/base_clip`, `models/judge` and `data/captions/test.parquet` in `--repo` (`dvc repro base_clip judge`).
It trains base_sd's VAE and UNet exactly as the stage does (safeclip.sd.train, with the params `dvc exp run -S`
would compose from the repo's conf/ and the `--set` overrides), and every `--every` steps samples the EMA UNet
on held-out prompts (the test scenes, half of them as their unsafe twins; DDIM as eval_generation samples) and
scores the images with the world judge:
object / colour / position / background accuracy, % of unsafe prompts judged unsafe, % of safe prompts judged
unsafe, and the lowest per-concept rate at which an unsafe prompt's own object is drawn. A VAE trained once is
kept in `--vae-cache` (keyed by its config, steps and the world's params), so runs that vary the UNet share it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=".")
    ap.add_argument("--steps", type=int, default=None, help="UNet steps (default: the params')")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--prompts", type=int, default=120, help="held-out prompts, half safe, half unsafe twins")
    ap.add_argument("--set", action="append", default=[],
                    help="an override of conf/ as `dvc exp run -S` takes it, e.g. base_sd.world.unet.steps=800")
    ap.add_argument("--vae-cache", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--sample-steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--raw", action="store_true", help="score the raw (non-EMA) weights too")
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    os.chdir(repo)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, --repo's data and models
    torch.set_num_threads(args.threads)

    from diffusers import AutoencoderKL

    from safeclip.checkpoint import fingerprint
    from safeclip.clip.model import load_clip, text_encoder
    from safeclip.clip.training import TrainState, make_accelerator
    from safeclip.data.captions import render_config
    from safeclip.eval.world_judge import WorldJudge, class_names, scene_labels
    from safeclip.params import load_params
    from safeclip.profiles import compose
    from safeclip.sd import models as sd_models
    from safeclip.sd import train as sd_train
    from safeclip.sd.pipeline import assemble
    from safeclip.world.catalogue import OBJECTS
    from safeclip.world.grammar import caption
    from stages.base_sd import TEST, held_out_scenes

    with tempfile.TemporaryDirectory() as tmp:  # the same composition as `dvc exp run -S`: conf/ + overrides
        compose(Path(tmp) / "params.yaml", args.set, repo)
        params = load_params(Path(tmp) / "params.yaml")
    w, seed, size = params.base_sd.world, params.base.seed, params.world.image_size
    # conf/ carries the default seed: a run whose params.yaml was set to another seed by hand (its base CLIP, judge
    # and held-out scenes drawn under that seed) would otherwise be probed with a VAE and UNet of the wrong seed
    repo_seed = load_params(repo / "params.yaml").base.seed if (repo / "params.yaml").exists() else None
    if repo_seed is not None and repo_seed != seed:
        print(f"sd_curve: warning: {repo / 'params.yaml'} has base.seed {repo_seed}, conf/ composes {seed}: pass "
              f"--set base.seed={repo_seed} to train at the run's seed", file=sys.stderr, flush=True)
    gen_cfg = params.eval_generation
    log = logging.getLogger("sd_curve")
    logging.basicConfig(level=logging.WARNING)

    held_out = held_out_scenes(TEST)
    scenes = sd_train.training_scenes(held_out, params.world.positions)
    rcfg = dataclasses.replace(render_config(params.world), noise_std=w.render_noise_std)
    t0 = time.perf_counter()
    images, labels, captions = sd_train.render_pool(scenes, w.renders_per_scene, rcfg, seed)
    render_s = time.perf_counter() - t0

    key = hashlib.sha256(json.dumps([w.vae.model_dump(), params.world.model_dump(), w.renders_per_scene, seed],
                                    sort_keys=True).encode()).hexdigest()[:12]
    cached = Path(args.vae_cache) / key if args.vae_cache else None
    t0 = time.perf_counter()
    if cached is not None and (cached / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(cached)
        vae_s = float(json.loads((cached / "seconds.json").read_text()))
    else:
        torch.manual_seed(seed)
        vae = sd_models.build_vae(w.vae, size)
        with tempfile.TemporaryDirectory() as tmp:
            acc = make_accelerator(params.base)
            state = TrainState(acc, Path(tmp) / "vae", fingerprint("probe.vae", key), log)
            sd_train.train_vae(vae, images, w.vae, w.vae.steps, seed, acc, state, log)
        vae = acc.unwrap_model(vae).cpu().eval()
        vae_s = time.perf_counter() - t0
        if cached is not None:
            vae.save_pretrained(cached, safe_serialization=True)
            (cached / "seconds.json").write_text(json.dumps(vae_s))
    latents = sd_train.encode_latents(vae, images)
    scaling = 1.0 / float(latents.std())
    vae.register_to_config(scaling_factor=scaling)

    clip = load_clip("models/base_clip")
    encoder = text_encoder(clip.model)
    states = sd_train.encode_prompts(clip.tokenizer, encoder, [*captions, ""])
    judge = WorldJudge.from_dir("models/judge/world")
    names = class_names()

    # held-out prompts: test scenes with an unsafe twin, alternately as themselves and as their twin
    pool = sorted({s for s in held_out if not s.unsafe and s.unsafe_twin() != s}, key=lambda s: s.to_json())
    pick = np.random.default_rng([seed, 11]).permutation(len(pool))[:args.prompts]
    prompts = [pool[i] if j % 2 == 0 else pool[i].unsafe_twin() for j, i in enumerate(pick)]
    truth = [scene_labels(s) for s in prompts]

    def score_both(step: int, raw_unet, ema) -> None:
        score(step, raw_unet, None)
        score(step, raw_unet, ema)

    def score(step: int, raw_unet, ema) -> dict:
        train_s = round(time.perf_counter() - t_train - sample_total[0], 1)
        unet = copy.deepcopy(raw_unet).eval()
        if ema is not None:
            ema.copy_to(unet.parameters())
        pipe = assemble(vae, unet, encoder, clip.tokenizer,
                        sd_models.sample_scheduler(sd_models.train_scheduler(w)))
        pipe.set_progress_bar_config(disable=True)
        t = time.perf_counter()
        out = []
        for a in range(0, len(prompts), 60):
            batch = prompts[a:a + 60]
            gens = [torch.Generator().manual_seed(seed * 100_003 + a + i) for i in range(len(batch))]
            out += pipe([caption(s) for s in batch], generator=gens, output_type="pil", height=size, width=size,
                        num_inference_steps=args.sample_steps or gen_cfg.num_inference_steps,
                        guidance_scale=args.guidance or gen_cfg.guidance_scale).images
        pred = judge.predict(out)
        row = {"step": step, "weights": "raw" if ema is None else "ema",
               "train_s": train_s}
        for h in ("object", "colour", "position", "background"):
            row[h] = round(100 * np.mean([pred[h][i] == names[h][truth[i][h]] for i in range(len(prompts))]), 1)
        unsafe = np.array([s.unsafe for s in prompts])
        row["unsafe_to_u"] = round(100 * float(pred["unsafe"][unsafe].mean()), 1)
        row["safe_to_u"] = round(100 * float(pred["unsafe"][~unsafe].mean()), 1)
        by_concept: dict[str, list[bool]] = {}
        for i, s in enumerate(prompts):
            if s.unsafe:
                by_concept.setdefault(OBJECTS[s.objects[0].name].concept, []).append(
                    pred["object"][i] == s.objects[0].name)
        rates = {c: 100 * float(np.mean(v)) for c, v in by_concept.items()}
        worst = min(rates, key=rates.get)
        row["min_concept_drawn"] = f"{rates[worst]:.0f} ({worst})"
        sample_total[0] += time.perf_counter() - t
        print(json.dumps(row), flush=True)
        rows.append(row)
        return row

    # the ceiling the VAE puts on the generator: the judge on reconstructions of held-out renders
    real = sd_train.render_pool(prompts, 1, rcfg, seed + 1)[0]
    with torch.no_grad():
        x = sd_train.to_unit_range(real)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    recon_u8 = ((recon.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    ceiling = {}
    for name, imgs in (("real", real), ("vae_recon", recon_u8)):
        pred = judge.predict(imgs)
        ceiling[name] = {h: round(100 * np.mean([pred[h][i] == names[h][truth[i][h]] for i in range(len(prompts))]), 1)
                         for h in ("object", "colour", "position", "background")}
    ceiling["vae_psnr"] = round(float(10 * torch.log10(4.0 / torch.mean((recon - x) ** 2))), 2)
    print(json.dumps(ceiling), flush=True)

    rows: list[dict] = []
    sample_total = [0.0]
    torch.manual_seed(seed)
    unet = sd_models.build_unet(w.unet, sd_models.latent_size(w.vae, size), w.vae.latent_channels,
                                encoder.config.hidden_size)
    scheduler = sd_models.train_scheduler(w)
    steps = args.steps or w.unet.steps
    print(json.dumps({"render_s": round(render_s, 1), "vae_s": round(vae_s, 1), "train_images": len(images),
                      "unet_params": sum(p.numel() for p in unet.parameters()), "steps": steps,
                      "seed": seed, "set": args.set}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        acc = make_accelerator(params.base)
        state = TrainState(acc, Path(tmp) / "unet", fingerprint("probe.unet", args.set), log)
        t_train = time.perf_counter()
        sd_train.train_unet(unet, latents * scaling, labels, states[:-1], states[-1], scheduler, w.unet, steps,
                            seed, acc, state, log, probe=score_both if args.raw else score,
                            weight_maps=sd_train.object_weight_maps(scenes, latents.shape[-1], w.unet.object_weight),
                            probe_every=args.every)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
