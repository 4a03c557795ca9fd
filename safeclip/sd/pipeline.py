"""Stable Diffusion pipelines: assemble the world's, load any (safetensors, no safety checker), swap the text
encoder for a made-safe CLIP text tower.

The swap is the whole of Safe-CLIP's text-to-image use: the UNet is untouched, so the new text tower must
produce hidden states of the width the UNet cross-attends to. A mismatch is caught here with both widths
named, not deep inside a matmul.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from safeclip.hub import model_dir
from safeclip.io import InputError

BASE_SD = "models/base_sd"  # what base_sd writes and every text-to-image evaluation draws with
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def assemble(vae, unet, text_encoder, tokenizer, scheduler) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False
                  ) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline folder, or a pointer folder written by base_sd for a hub id / path."""
    d = model_dir(path, allow_pickle)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            d, torch_dtype=dtype, use_safetensors=not allow_pickle, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a loadable StableDiffusionPipeline folder ({e})") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


def use_sampler(pipe: StableDiffusionPipeline, sampler: str) -> StableDiffusionPipeline:
    """`pipeline` keeps the scheduler saved with the pipeline (world: DDIM; SD v1.4: PNDM). `dpm_solver` is
    DPM-Solver++ (2M) built from that scheduler's config (the same betas, prediction type, timestep spacing and
    zero-terminal-SNR rescaling): a multistep solver that needs far fewer steps than DDIM for the same images."""
    if sampler == "dpm_solver":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                                 solver_order=2)
    elif sampler != "pipeline":
        raise ValueError(f"unknown sampler {sampler!r}")
    return pipe


def text_width(text_encoder) -> int:
    return int(text_encoder.config.hidden_size)


def unet_width(unet) -> int:
    return int(unet.config.cross_attention_dim)


def swap_text_encoder(pipe: StableDiffusionPipeline, text_encoder, tokenizer, source: str = "text encoder"
                      ) -> StableDiffusionPipeline:
    """`pipe` with another CLIP text tower (and its tokenizer); refuses a tower of the wrong width."""
    got, want = text_width(text_encoder), unet_width(pipe.unet)
    if got != want:
        raise InputError(
            f"{source}: its hidden size is {got}, but the UNet cross-attends to states of width {want} "
            f"(unet.config.cross_attention_dim). A text tower can replace SD's only when the widths match: use "
            f"a CLIP of the family the UNet was trained with (e.g. ViT-L/14 for SD v1.x, ViT-H/14 for SD 2.x)")
    text_encoder = text_encoder.to(device=pipe.unet.device, dtype=pipe.unet.dtype).eval()
    pipe.text_encoder, pipe.tokenizer = text_encoder, tokenizer
    pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
    return pipe
