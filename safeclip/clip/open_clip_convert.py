"""Run an open_clip CLIP through the HF ``CLIPModel`` fine-tuning code, and export it back.

The pipeline only knows how to fine-tune ``transformers.CLIPModel``. A standard open_clip CLIP (ViT image tower,
causal text transformer, CLS-token / EOT pooling, bias-free projections) is the same network as HF's CLIP with
renamed and re-packed tensors, so converting it exactly is cheaper and safer than teaching every stage a second
model API. Anything open_clip can build that HF's CLIP cannot express (other towers, poolers or norms) is refused
with a ``ValueError`` rather than converted approximately.

Weights are only ever read from safetensors files: open_clip's own loader falls back to ``torch.load`` (pickle) for
``.pt``/``.bin`` checkpoints, which can run arbitrary code, so it is never used here.

open_clip is imported lazily: parsing a source string must stay cheap for parameter validation.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from safeclip.io import InputError

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

log = logging.getLogger(__name__)

PREFIX = "open_clip:"
SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's safetensors file name on the HF hub
# The bundled BPE's special-token ids. open_clip calls them <start_of_text>/<end_of_text>; the HF tokenizer keeps its
# own names (its pre-tokenizer regex hard-codes them) but the ids are what the models see, and those are the same.
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
_N_MERGES = 49152 - 256 - 2  # exactly the slice open_clip's SimpleTokenizer takes from the BPE file
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".npz", ".npy", ".tar")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_RESIZE_MODES = ("shortest", "squash")


def _weights_help(arch: str, repo_id: str | None = None, filename: str = SAFE_WEIGHTS_NAME) -> str:
    fetch = f"`hf download {repo_id} {filename}`" if repo_id else "`hf download <repo> <file>.safetensors`"
    return (
        f"Provide safetensors weights for {arch!r} in one of two ways: on a machine with internet access run "
        f"{fetch} (or huggingface_hub.hf_hub_download) with the same HF_HOME / HF_HUB_CACHE this run uses, so the "
        f"file lands in the HF cache (copy the cache over if needed), or pass a local file as "
        f"'open_clip:{arch}//path/to/weights.safetensors'. Pickle checkpoints (.pt/.bin/.pth) are refused because "
        f"loading them can execute code; convert one once, in a trusted environment, with "
        f"safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')."
    )


# --- source strings -------------------------------------------------------------------------------------------


def parse_open_clip_source(source: str) -> tuple[str, str | None] | None:
    """Split ``open_clip:ARCH[/TAG | //PATH.safetensors]`` so the caller can tell open_clip sources from HF ones.

    Everything after the first ``/`` is the pretrained part; a path keeps its own leading ``/`` (hence the double
    slash for absolute paths). Whether it is a tag or a file is decided in ``load_open_clip``, where the
    safetensors-only rule is enforced.
    """
    if not source.startswith(PREFIX):
        return None
    rest = source[len(PREFIX):].strip()
    arch, sep, pretrained = rest.partition("/")
    arch = arch.strip()
    if not arch:
        raise InputError(f"{source!r}: no open_clip architecture after {PREFIX!r} (e.g. 'open_clip:ViT-B-32')")
    if arch.startswith(("hf-hub:", "local-dir:")):
        raise InputError(
            f"{source!r}: open_clip's hf-hub:/local-dir: schemas are not supported; use 'open_clip:ARCH/TAG' or "
            f"'open_clip:ARCH//path/to/weights.safetensors'"
        )
    return arch, (pretrained or None) if sep else None


def _is_path_like(pretrained: str) -> bool:
    return "/" in pretrained or os.sep in pretrained or "." in Path(pretrained).name


# --- loading --------------------------------------------------------------------------------------------------


def _check_config(arch: str, model_cfg: dict[str, Any]) -> None:
    """Refuse, before building anything, configs whose construction would hit the network or whose tokenizer the
    converted HF tokenizer cannot reproduce."""
    vision_cfg = model_cfg.get("vision_cfg", {})
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        raise ValueError(f"open_clip {arch!r}: HF text towers ({text_cfg['hf_model_name']}) are not supported")
    if vision_cfg.get("timm_model_name"):
        raise ValueError(f"open_clip {arch!r}: timm image towers ({vision_cfg['timm_model_name']}) are not supported")
    if isinstance(vision_cfg.get("layers"), list | tuple):
        raise ValueError(f"open_clip {arch!r}: ModifiedResNet image towers are not supported (ViT only)")
    if "multimodal_cfg" in model_cfg:
        raise ValueError(f"open_clip {arch!r}: CoCa models are not supported")
    if model_cfg.get("custom_text"):
        raise ValueError(f"open_clip {arch!r}: CustomTextCLIP models (SigLIP-style towers) are not supported")
    if "siglip" in arch.lower() or text_cfg.get("hf_tokenizer_name"):
        raise ValueError(f"open_clip {arch!r}: only open_clip's bundled CLIP BPE tokenizer is supported")
    tok_kwargs = text_cfg.get("tokenizer_kwargs") or {}
    if tok_kwargs.get("clean", "lower") != "lower" or tok_kwargs.get("reduction_mask"):
        raise ValueError(f"open_clip {arch!r}: tokenizer options {tok_kwargs} are not supported")


def _resolve_weights(arch: str, pretrained: str) -> tuple[Path, dict[str, Any]]:
    """Map a tag or path to a local safetensors file (plus the tag's preprocessing / activation settings)."""
    import open_clip

    if pretrained.endswith(".safetensors"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise InputError(f"open_clip weights file {str(path)!r} does not exist")
        return path, {}
    if pretrained.lower().endswith(_PICKLE_SUFFIXES) or _is_path_like(pretrained):
        raise InputError(
            f"open_clip weights {pretrained!r}: only .safetensors files are accepted. " + _weights_help(arch)
        )
    pcfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise InputError(f"open_clip {arch!r} has no pretrained tag {pretrained!r}; known tags: {tags}")
    hub = pcfg.get("hf_hub", "")
    if not hub:
        raise InputError(
            f"open_clip {arch}/{pretrained} is only published as a pickle download ({pcfg.get('url')}), with no "
            f"safetensors file on the HF hub. " + _weights_help(arch)
        )
    if hub.endswith("/"):  # open_clip's convention: a trailing slash means "the repo's default weights file"
        repo_id, filename = hub.rstrip("/"), SAFE_WEIGHTS_NAME
    else:
        repo_id, filename = hub.rsplit("/", 1)
        if not filename.endswith(".safetensors"):  # open_clip's rule for the safe sibling of a named pickle
            stem = Path(filename).stem
            filename = SAFE_WEIGHTS_NAME if filename == "open_clip_pytorch_model.bin" else f"{stem}.safetensors"
    return _hub_file(arch, pretrained, repo_id, filename), pcfg


def _hub_file(arch: str, tag: str, repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        where = "in the local HF cache (HF_HUB_OFFLINE=1)" if offline else "on the HF hub or in the local HF cache"
        raise InputError(
            f"open_clip {arch}/{tag}: {repo_id}/{filename} was not found {where} ({type(exc).__name__}). "
            + _weights_help(arch, repo_id, filename)
        ) from exc


def _read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{str(path)!r} is not a readable safetensors file: {exc}. " + _weights_help(arch)) from exc
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from a DDP-wrapped model
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def load_open_clip(arch: str, pretrained: str | None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Build an open_clip model from safetensors weights only, returning ``(model, tokenizer, preprocess_cfg)``.

    ``pretrained`` is None (architecture only, random init), a pretrained tag (resolved to the tag's HF hub repo
    and its ``open_clip_model.safetensors``; cache only when ``HF_HUB_OFFLINE=1``) or a local ``.safetensors``
    path. A tag trained with QuickGELU forces QuickGELU even on the plain architecture name, as open_clip warns
    users to do, because the converted model must compute what the weights were trained with.
    """
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise InputError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    _check_config(arch, model_cfg)
    path, pcfg = _resolve_weights(arch, pretrained) if pretrained else (None, {})
    force_quick_gelu = bool(pcfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)
    if force_quick_gelu:
        log.warning("open_clip %s/%s was trained with QuickGELU: building it with QuickGELU", arch, pretrained)
    preprocess_overrides = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    model = open_clip.create_model(
        arch,
        pretrained=None,
        force_quick_gelu=force_quick_gelu,
        force_preprocess_cfg=preprocess_overrides,
        pretrained_image=False,
        pretrained_text=False,
    )
    _check_supported(model)  # before reading possibly large weights
    if path is not None:
        state_dict = _read_state_dict(path, arch)
        if "logit_scale" in state_dict:
            state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise InputError(f"{str(path)!r} does not hold open_clip {arch!r} weights: {exc}") from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return model, tokenizer, dict(open_clip.get_model_preprocess_cfg(model))


# --- conversion checks ----------------------------------------------------------------------------------------


def _layer_norm_eps(norms: Sequence[nn.Module], what: str) -> float:
    eps = set()
    for norm in norms:
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            raise ValueError(f"{what}: only affine LayerNorm with bias is supported, got {norm!r}")
        if tuple(norm.normalized_shape) != (norm.weight.shape[0],):
            raise ValueError(f"{what}: unexpected LayerNorm shape {norm.normalized_shape}")
        eps.add(float(norm.eps))
    if len(eps) != 1:
        raise ValueError(f"{what}: LayerNorms with different eps {sorted(eps)} are not supported")
    return eps.pop()


def _activation_name(act: nn.Module, what: str) -> str:
    from open_clip.transformer import QuickGELU

    if type(act) is QuickGELU:
        return "quick_gelu"
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu"
    raise ValueError(f"{what}: activation {act!r} is not supported (QuickGELU or exact GELU only)")


def _check_transformer(transformer: nn.Module, what: str) -> tuple[str, int, int]:
    """Return (activation, heads, mlp width) after refusing blocks HF's CLIPEncoderLayer cannot express."""
    from open_clip.transformer import ResidualAttentionBlock

    acts, heads, mlp_widths = set(), set(), set()
    for i, block in enumerate(transformer.resblocks):
        where = f"{what} block {i}"
        if type(block) is not ResidualAttentionBlock:
            raise ValueError(f"{where}: {type(block).__name__} (custom attention / qk-norm / scaled heads) "
                             f"is not supported")
        if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
            raise ValueError(f"{where}: LayerScale (ls_init_value) is not supported")
        if hasattr(block, "ln_1_kv"):
            raise ValueError(f"{where}: cross-attention blocks are not supported")
        attn = block.attn
        if (not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_bias is None
                or attn.bias_k is not None or attn.out_proj.bias is None or not attn.batch_first):
            raise ValueError(f"{where}: only batch-first nn.MultiheadAttention with packed biased q/k/v is supported")
        if [n for n, _ in block.mlp.named_children()] != ["c_fc", "gelu", "c_proj"] or block.mlp.c_fc.bias is None:
            raise ValueError(f"{where}: MLP {block.mlp} is not the plain c_fc/act/c_proj MLP")
        acts.add(_activation_name(block.mlp.gelu, where))
        heads.add(attn.num_heads)
        mlp_widths.add(block.mlp.c_fc.out_features)
    if len(acts) != 1 or len(heads) != 1 or len(mlp_widths) != 1:
        raise ValueError(f"{what}: blocks differ in activation/heads/MLP width ({acts}, {heads}, {mlp_widths})")
    return acts.pop(), heads.pop(), mlp_widths.pop()


def _check_supported(model: nn.Module) -> dict[str, Any]:
    """Collect the HF config values, refusing every open_clip variant HF's CLIP would silently compute differently."""
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    if type(model) is not CLIP:
        raise ValueError(f"only open_clip.CLIP models are supported, got {type(model).__name__} "
                         f"(CustomTextCLIP / CoCa / SigLIP-style towers cannot be expressed as an HF CLIPModel)")
    if getattr(model, "logit_bias", None) is not None:
        raise ValueError("models with a logit_bias (SigLIP sigmoid loss) are not supported")
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"image tower {type(visual).__name__} is not supported (ViT only: no ModifiedResNet, timm "
                         f"or ConvNeXt towers)")
    if visual.attn_pool is not None:
        raise ValueError("image tower with attentional pooling is not supported")
    if visual.pool_type != "tok":
        raise ValueError(f"image pool_type {visual.pool_type!r} is not supported (CLS token 'tok' only)")
    if visual.final_ln_after_pool:
        raise ValueError("image tower final_ln_after_pool=True is not supported")
    if isinstance(visual.ln_pre, nn.Identity):
        raise ValueError("image tower no_ln_pre=True is not supported (HF CLIP always has pre_layrnorm)")
    if visual.proj is None or not isinstance(visual.proj, nn.Parameter):
        raise ValueError("image tower without a plain (bias-free) projection matrix is not supported")
    (img_h, img_w), (patch_h, patch_w) = visual.image_size, visual.patch_size
    if img_h != img_w or patch_h != patch_w:
        raise ValueError(f"non-square image {visual.image_size} or patch {visual.patch_size} sizes are not supported")
    if visual.conv1.bias is not None:
        raise ValueError("patch embedding with a bias is not supported")
    v_width = visual.conv1.out_channels
    if tuple(visual.positional_embedding.shape) != (visual.grid_size[0] * visual.grid_size[1] + 1, v_width):
        raise ValueError(f"image positional embedding {tuple(visual.positional_embedding.shape)} is not one "
                         f"learnable vector per patch plus the class token")
    v_act, v_heads, v_mlp = _check_transformer(visual.transformer, "image tower")
    v_eps = _layer_norm_eps([visual.ln_pre, visual.ln_post]
                            + [n for b in visual.transformer.resblocks for n in (b.ln_1, b.ln_2)], "image tower")

    if model.text_pool_type not in ("argmax", "eos"):
        raise ValueError(f"text pool_type {model.text_pool_type!r} is not supported (argmax / eos only)")
    if model.text_pool_type == "eos" and model.text_eos_id != EOT_ID:
        raise ValueError(f"text eos pooling on id {model.text_eos_id} is not supported (only the EOT id {EOT_ID})")
    if model.vocab_size != VOCAB_SIZE or model.token_embedding.num_embeddings != VOCAB_SIZE:
        raise ValueError(f"text vocab size {model.vocab_size} is not the bundled CLIP BPE's {VOCAB_SIZE}")
    if model.attn_mask is None:
        raise ValueError("text tower no_causal_mask=True is not supported (HF CLIP text attention is causal)")
    ctx = model.context_length
    causal = torch.full((ctx, ctx), float("-inf")).triu_(1)
    if tuple(model.attn_mask.shape) != (ctx, ctx) or not torch.equal(model.attn_mask.float().cpu(), causal):
        raise ValueError("text tower attention mask is not the plain causal mask")
    if model.text_projection is None or not isinstance(model.text_projection, nn.Parameter):
        raise ValueError("text projection with a bias (proj_bias) or no projection (proj_type 'none') is not "
                         "supported")
    t_width = model.token_embedding.embedding_dim
    if tuple(model.positional_embedding.shape) != (ctx, t_width):
        raise ValueError(f"text positional embedding {tuple(model.positional_embedding.shape)} does not match the "
                         f"context length {ctx} (embed_cls is not supported)")
    t_act, t_heads, t_mlp = _check_transformer(model.transformer, "text tower")
    t_eps = _layer_norm_eps([model.ln_final] + [n for b in model.transformer.resblocks for n in (b.ln_1, b.ln_2)],
                            "text tower")
    embed_dim = visual.proj.shape[1]
    if tuple(visual.proj.shape) != (v_width, embed_dim) or tuple(model.text_projection.shape) != (t_width, embed_dim):
        raise ValueError(f"projection shapes {tuple(visual.proj.shape)} / {tuple(model.text_projection.shape)} do "
                         f"not map both towers to one embedding size")
    if model.logit_scale.numel() != 1:
        raise ValueError("a non-scalar logit_scale is not supported")
    return {
        "embed_dim": embed_dim,
        "vision": dict(hidden_size=v_width, intermediate_size=v_mlp,
                       num_hidden_layers=len(visual.transformer.resblocks), num_attention_heads=v_heads,
                       image_size=img_h, patch_size=patch_h, hidden_act=v_act, layer_norm_eps=v_eps),
        "text": dict(vocab_size=VOCAB_SIZE, hidden_size=t_width, intermediate_size=t_mlp,
                     num_hidden_layers=len(model.transformer.resblocks), num_attention_heads=t_heads,
                     max_position_embeddings=ctx, hidden_act=t_act, layer_norm_eps=t_eps),
    }


# --- weight mapping -------------------------------------------------------------------------------------------


def _block_pairs(hf: str, oc: str) -> list[tuple[str, str]]:
    return [
        (f"{hf}.layer_norm1.weight", f"{oc}.ln_1.weight"),
        (f"{hf}.layer_norm1.bias", f"{oc}.ln_1.bias"),
        (f"{hf}.self_attn.out_proj.weight", f"{oc}.attn.out_proj.weight"),
        (f"{hf}.self_attn.out_proj.bias", f"{oc}.attn.out_proj.bias"),
        (f"{hf}.layer_norm2.weight", f"{oc}.ln_2.weight"),
        (f"{hf}.layer_norm2.bias", f"{oc}.ln_2.bias"),
        (f"{hf}.mlp.fc1.weight", f"{oc}.mlp.c_fc.weight"),
        (f"{hf}.mlp.fc1.bias", f"{oc}.mlp.c_fc.bias"),
        (f"{hf}.mlp.fc2.weight", f"{oc}.mlp.c_proj.weight"),
        (f"{hf}.mlp.fc2.bias", f"{oc}.mlp.c_proj.bias"),
    ]


def _key_map(vision_layers: int, text_layers: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]],
                                                               list[tuple[str, str]]]:
    """One table drives both directions, so export is the exact inverse of import by construction.

    Returns (copied 1:1, transposed projections, (HF attention prefix, open_clip attention prefix) whose packed
    in_proj is split into q/k/v).
    """
    direct = [
        ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
        ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
        ("logit_scale", "logit_scale"),
    ]
    attention = []
    for i in range(vision_layers):
        hf, oc = f"vision_model.encoder.layers.{i}", f"visual.transformer.resblocks.{i}"
        direct += _block_pairs(hf, oc)
        attention.append((f"{hf}.self_attn", f"{oc}.attn"))
    for i in range(text_layers):
        hf, oc = f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}"
        direct += _block_pairs(hf, oc)
        attention.append((f"{hf}.self_attn", f"{oc}.attn"))
    transposed = [("visual_projection.weight", "visual.proj"), ("text_projection.weight", "text_projection")]
    return direct, transposed, attention


def _open_clip_to_hf_state_dict(oc: dict[str, torch.Tensor], vision_layers: int, text_layers: int,
                                ) -> dict[str, torch.Tensor]:
    direct, transposed, attention = _key_map(vision_layers, text_layers)
    out = {hf: oc[o] for hf, o in direct}
    out.update({hf: oc[o].t() for hf, o in transposed})
    for hf, o in attention:
        for name in ("weight", "bias"):
            q, k, v = oc[f"{o}.in_proj_{name}"].chunk(3, dim=0)
            out.update({f"{hf}.q_proj.{name}": q, f"{hf}.k_proj.{name}": k, f"{hf}.v_proj.{name}": v})
    out["logit_scale"] = out["logit_scale"].reshape(())
    return out


# --- tokenizer and image processor ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _bundled_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Rebuild open_clip's SimpleTokenizer vocabulary from its bundled BPE file, in the same order, so ids match.

    Order: the 256 byte symbols, the same with the end-of-word marker, one token per merge, then the two special
    tokens (here under HF's names).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:_N_MERGES + 1])
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise RuntimeError(f"open_clip's bundled BPE gave {len(vocab)} tokens, expected {VOCAB_SIZE} unique ones")
    return tuple(vocab), merges


def _build_tokenizer(context_length: int) -> CLIPTokenizer:
    """HF tokenizer with open_clip's ids, built offline from the BPE file that ships with open_clip.

    It pads with <|endoftext|> (the HF CLIP convention) rather than open_clip's 0: id 0 is the token "!", and
    naming "!" the pad token makes HF register it as a special token on save/reload, which changes how "!" in text
    is tokenized. Pads sit after the EOT and both models pool the first EOT under a causal mask, so embeddings are
    unaffected. HF's normalizer does NFC + whitespace collapsing + lowercasing but not open_clip's ftfy/html
    unescaping (curly quotes, HTML entities, ligatures, full-width forms differ); CLIPTokenizer rebuilds its
    normalizer on reload, so that cannot be patched in persistently.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _bundled_bpe()
    tokenizer = CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(vocab)}, merges=list(merges), model_max_length=context_length
    )
    if (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) != (SOT_ID, EOT_ID, EOT_ID):
        raise RuntimeError("converted CLIP tokenizer special-token ids do not match open_clip's")
    return tokenizer


def _build_image_processor(image_size: int, image_mean: Sequence[float], image_std: Sequence[float],
                           interpolation: str = "bicubic", resize_mode: str = "shortest") -> CLIPImageProcessor:
    """The HF counterpart of open_clip's eval transform: resize the shortest edge and centre-crop ("shortest"), or
    resize straight to the square ("squash", used by e.g. the DFN5B tags), then normalise."""
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not supported ({', '.join(_INTERPOLATIONS)})")
    if len(image_mean) != 3 or len(image_std) != 3:
        raise ValueError(f"image_mean/image_std must have 3 channels, got {image_mean} / {image_std}")
    if resize_mode not in _RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r} is not supported ({', '.join(_RESIZE_MODES)})")
    squash = resize_mode == "squash"
    return CLIPImageProcessor(
        do_resize=True,
        size={"height": int(image_size), "width": int(image_size)} if squash else {"shortest_edge": int(image_size)},
        resample=getattr(PILImageResampling, interpolation.upper()),
        do_center_crop=not squash,
        crop_size={"height": int(image_size), "width": int(image_size)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(m) for m in image_mean],
        image_std=[float(s) for s in image_std],
        do_convert_rgb=True,
    )


# --- public conversion ----------------------------------------------------------------------------------------


def open_clip_to_hf(
    model: nn.Module,
    *,
    quick_gelu: bool | None,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    image_size: int | Sequence[int],
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessor]:
    """Convert a standard open_clip CLIP into an HF ``CLIPModel`` that computes the same embeddings.

    ``quick_gelu`` states what the model was built with and is checked against its blocks, so a mislabelled
    activation (the classic open_clip ``-quickgelu`` pitfall) is an error rather than a subtly different model;
    None reads it from the blocks (e.g. after ``load_open_clip`` forced QuickGELU for a tag). ``image_size``,
    ``interpolation`` and ``resize_mode`` are open_clip's preprocess settings (``preprocess_cfg``); the size must
    equal the model's input size.
    """
    from transformers import CLIPConfig, CLIPModel

    dims = _check_supported(model)
    if quick_gelu is not None:
        want = "quick_gelu" if quick_gelu else "gelu"
        for tower in ("vision", "text"):
            if dims[tower]["hidden_act"] != want:
                raise ValueError(f"quick_gelu={quick_gelu} but the {tower} tower uses {dims[tower]['hidden_act']}")
    sizes = [int(image_size)] * 2 if isinstance(image_size, int) else [int(s) for s in image_size]
    if len(sizes) != 2 or sizes[0] != sizes[1] or sizes[0] != dims["vision"]["image_size"]:
        raise ValueError(f"image_size {image_size} does not match the model's square input size "
                         f"{dims['vision']['image_size']}")
    processor = _build_image_processor(sizes[0], image_mean, image_std, interpolation, resize_mode)

    embed_dim = dims["embed_dim"]
    config = CLIPConfig(
        text_config=dict(dims["text"], projection_dim=embed_dim, pad_token_id=EOT_ID, bos_token_id=SOT_ID,
                         eos_token_id=EOT_ID),
        vision_config=dict(dims["vision"], projection_dim=embed_dim, num_channels=3),
        projection_dim=embed_dim,
        logit_scale_init_value=float(model.logit_scale.detach().reshape(())),
    )
    hf_model = CLIPModel(config)
    state = _open_clip_to_hf_state_dict(
        {k: v.detach() for k, v in model.state_dict().items()},
        dims["vision"]["num_hidden_layers"], dims["text"]["num_hidden_layers"],
    )
    expected = set(hf_model.state_dict())
    if set(state) != expected:
        raise RuntimeError(f"HF CLIPModel keys differ from the mapping: missing {sorted(expected - set(state))[:5]}, "
                           f"extra {sorted(set(state) - expected)[:5]}")
    hf_model.load_state_dict(state, strict=True)
    hf_model.eval()
    tokenizer = _build_tokenizer(dims["text"]["max_position_embeddings"])
    return hf_model, tokenizer, processor


def hf_to_open_clip_state_dict(model: CLIPModel) -> dict[str, torch.Tensor]:
    """Invert ``open_clip_to_hf`` so a fine-tuned model can be shipped as an open_clip checkpoint.

    Load the result with ``open_clip.create_model(arch)`` (plus ``force_quick_gelu=True`` when the HF config says
    ``quick_gelu`` but the architecture name does not) and ``load_state_dict``. Adapters (LoRA) must be merged
    first: any key outside the plain CLIP layout is refused rather than dropped. Tensors come back as contiguous CPU
    copies, ready for ``safetensors.torch.save_file``.
    """
    config = model.config
    v_layers, t_layers = config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers
    if config.text_config.eos_token_id != EOT_ID:
        raise ValueError(f"text eos_token_id {config.text_config.eos_token_id} is not the open_clip EOT id {EOT_ID}")
    hf = {k: v.detach() for k, v in model.state_dict().items()}
    direct, transposed, attention = _key_map(v_layers, t_layers)
    expected = {hf_key for hf_key, _ in direct + transposed}
    expected |= {f"{a}.{p}_proj.{n}" for a, _ in attention for p in "qkv" for n in ("weight", "bias")}
    if set(hf) != expected:
        raise ValueError(f"not a plain CLIPModel state dict (merge adapters first): unexpected "
                         f"{sorted(set(hf) - expected)[:5]}, missing {sorted(expected - set(hf))[:5]}")
    out = {o: hf[k] for k, o in direct}
    out.update({o: hf[k].t() for k, o in transposed})
    for a, o in attention:
        for name in ("weight", "bias"):
            out[f"{o}.in_proj_{name}"] = torch.cat([hf[f"{a}.{p}_proj.{name}"] for p in "qkv"], dim=0)
    return {k: v.to("cpu", copy=True).contiguous() for k, v in out.items()}
