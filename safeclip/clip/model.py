"""CLIP bundles (model, tokenizer, image processor): build the world's tiny CLIP, load any CLIP, save one.

Every CLIP in the pipeline is an HF `CLIPModel` folder, whatever its origin (trained here, hub id, local path,
converted open_clip), so fine-tuning, export and Stable Diffusion's text-encoder swap share one code path.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from safeclip.hub import load_tokenizer, model_dir, resolve_model_dir, write_pointer
from safeclip.io import InputError, atomic_dir
from safeclip.params import BaseClip, WorldClip
from safeclip.world.grammar import vocabulary
from safeclip.world.tokenizer import train_word_tokenizer

# OpenAI CLIP's normalisation; the world keeps it so that world and paper images are prepared alike.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    model: CLIPModel
    tokenizer: object  # a transformers tokenizer
    image_processor: CLIPImageProcessor

    def save(self, path: str | Path) -> None:
        """Atomic HF folder (safetensors): loadable by CLIPModel, CLIPTextModel and AutoProcessor pieces."""
        with atomic_dir(path) as out:
            self.model.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
            self.image_processor.save_pretrained(out)


def build_world_clip(cfg: WorldClip, image_size: int) -> ClipBundle:
    """A randomly initialised tiny CLIP with a word-level tokenizer over the world's vocabulary."""
    tok = train_word_tokenizer([" ".join(vocabulary())], append_eos=True, model_max_length=cfg.max_length)
    tower = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                 num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, projection_dim=cfg.projection_dim)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=cfg.max_length, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **tower),
        vision_config=dict(image_size=image_size, patch_size=cfg.patch_size, **tower),
        projection_dim=cfg.projection_dim)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return ClipBundle(CLIPModel(config), tok, processor)


def resolve_base_clip(cfg: BaseClip, out: Path) -> str:
    """Paper face: write the base CLIP folder for a hub id, local path or open_clip source; returns a summary.

    HF sources become a pointer (no multi-GB copy); open_clip sources are converted and saved in full.
    """
    from safeclip.clip.open_clip_convert import parse_open_clip_source

    spec = parse_open_clip_source(cfg.source)
    if spec is not None:
        bundle = convert_open_clip(*spec)
        bundle.save(out)
        # Read by the exporter: where the base came from, to write an open_clip checkpoint back.
        (out / "open_clip.json").write_text(json.dumps({"arch": spec[0], "pretrained": spec[1]}) + "\n")
        return f"open_clip {spec[0]} ({spec[1] or 'random init'}) converted to a CLIPModel"
    path = resolve_model_dir(cfg.source, cfg.revision, param="base_clip.source")
    out.mkdir(parents=True, exist_ok=True)
    write_pointer(out, cfg.source, cfg.revision, path)
    return f"{cfg.source} -> {path}"


def convert_open_clip(arch: str, pretrained: str | None) -> ClipBundle:
    """An open_clip model (safetensors weights only) as an equivalent HF CLIP bundle."""
    from safeclip.clip.open_clip_convert import load_open_clip, open_clip_to_hf

    model, _, pre = load_open_clip(arch, pretrained)
    hf, tok, processor = open_clip_to_hf(model, quick_gelu=None, image_mean=pre["mean"], image_std=pre["std"],
                                         image_size=pre["size"], interpolation=pre.get("interpolation", "bicubic"),
                                         resize_mode=pre.get("resize_mode", "shortest"))
    return ClipBundle(hf, tok, processor)


def load_clip(path: str | Path, allow_pickle: bool = False) -> ClipBundle:
    """A CLIP folder (or a pointer to one): safetensors only, never remote code."""
    d = model_dir(path, allow_pickle)
    try:
        model = CLIPModel.from_pretrained(d, use_safetensors=not allow_pickle, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a loadable CLIPModel folder ({e})") from e
    tok = load_tokenizer(d)
    processor = CLIPImageProcessor.from_pretrained(d)
    return ClipBundle(model.eval(), tok, processor)


def decode_image(image: dict | bytes | Image.Image | np.ndarray, where: str = "image") -> Image.Image:
    """An RGB PIL image from a Parquet image struct ({bytes, path}), raw bytes, an array or a PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data is None and path is None:
            raise InputError(f"{where}: image has neither bytes nor a path")
        if data is None:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InputError(f"{where}: image file {path} cannot be read ({e})") from e
        image = data
    try:
        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")
    except Exception as e:
        raise InputError(f"{where}: image cannot be decoded ({e})") from e


def pixel_values(processor: CLIPImageProcessor, images: Sequence, where: str = "image") -> torch.Tensor:
    pil = [decode_image(im, f"{where} {i}") for i, im in enumerate(images)]
    return processor(images=pil, return_tensors="pt")["pixel_values"]


def tokenize(tokenizer, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")


def text_embeddings(model: CLIPModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Projected pooled text embeddings (transformers v5 returns them as `.pooler_output`)."""
    return model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output


def image_embeddings(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    return model.get_image_features(pixel_values=pixels).pooler_output


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    device = next(bundle.model.parameters()).device
    out = []
    for a in range(0, len(texts), batch_size):
        batch = {k: v.to(device) for k, v in tokenize(bundle.tokenizer, texts[a:a + batch_size]).items()}
        out.append(text_embeddings(bundle.model, batch).float().cpu())
    return torch.cat(out) if out else torch.empty(0, bundle.model.config.projection_dim)


@torch.no_grad()
def encode_images(bundle: ClipBundle, images: Sequence, batch_size: int = 256, where: str = "image") -> torch.Tensor:
    device = next(bundle.model.parameters()).device
    out = []
    for a in range(0, len(images), batch_size):
        pixels = pixel_values(bundle.image_processor, images[a:a + batch_size], where).to(device)
        out.append(image_embeddings(bundle.model, pixels).float().cpu())
    return torch.cat(out) if out else torch.empty(0, bundle.model.config.projection_dim)


TEXT_PREFIX = "text_model."


def text_encoder(model):
    """The CLIPModel's text tower as a CLIPTextModel (no projection): what SD's `text_encoder` is."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(model.config.text_config)
    weights = {k: v for k, v in model.state_dict().items() if k.startswith(TEXT_PREFIX)}
    if not any(k.startswith(TEXT_PREFIX) for k in encoder.state_dict()):  # transformers v5: a flat CLIPTextModel
        weights = {k[len(TEXT_PREFIX):]: v for k, v in weights.items()}
    encoder.load_state_dict(weights, strict=True)  # any layout mismatch fails here, not in the user's pipeline
    return encoder.to(model.dtype).eval()
