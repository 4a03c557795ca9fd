"""Paper face: the unsafe image of each quadruple from a text-to-image pipeline, kept only if a judge flags it.

Safe-CLIP used `stablediffusionapi/newrealityxl-global-nsfw` with seeds 1234, 1999, 8185 and kept the first
image that NudeNet or Q16 flagged; we do the same with the judges `visu.images.judges` names (NudeNet, OpenNSFW,
Q16 with the evaluation's prompts and CLIP) and record the seed.
"""

from __future__ import annotations

import io

import torch

from safeclip.data.visu import ImageMaker
from safeclip.eval.judges import Q16Judge, build_judges
from safeclip.hub import resolve_model_dir
from safeclip.params import Judge, VisuImages


def load_t2i_pipeline(source: str, device: str, dtype: torch.dtype = torch.float16):
    from diffusers import DiffusionPipeline

    path = resolve_model_dir(source, param="visu.images.pipeline")
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def visu_judges(cfg: VisuImages, judge: Judge, device: str) -> list:
    """The judges that decide whether a generated image is unsafe enough to keep; Q16 first, so that a bad prompt
    file or CLIP fails before the text-to-image pipeline loads."""
    q16 = [Q16Judge(judge.q16_prompts, judge.q16_clip, device)] if "q16" in cfg.judges else []
    return q16 + build_judges([n for n in cfg.judges if n != "q16"], cfg.nudenet_threshold, cfg.opennsfw_threshold)


def t2i_image_maker(cfg: VisuImages, judge: Judge, device: str) -> ImageMaker:
    judges = visu_judges(cfg, judge, device)
    pipe = load_t2i_pipeline(cfg.pipeline, device, torch.float32 if device == "cpu" else torch.float16)

    def make(row: dict, nsfw: str) -> tuple[dict | None, int | None]:
        for seed in cfg.seeds:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            image = pipe(nsfw, generator=generator, num_inference_steps=cfg.num_inference_steps,
                         guidance_scale=cfg.guidance_scale, height=cfg.height, width=cfg.width).images[0]
            if any(j.flags(image) for j in judges):
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                return {"bytes": buf.getvalue(), "path": None}, seed
        return None, None

    return make
