"""LoRA on both CLIP towers with peft, and the merge that turns it back into a plain CLIPModel."""

from __future__ import annotations

import copy

from peft import LoraConfig, get_peft_model
from transformers import CLIPModel

from safeclip.params import ClipLora


def frozen_copy(model: CLIPModel) -> CLIPModel:
    """A deep copy in eval mode with no trainable weights: the reference T0/V0.

    Made *before* LoRA is injected: peft wraps modules in place, so a reference taken afterwards would share
    weights with the model being trained (the released Safe-CLIP script's accident).
    """
    return copy.deepcopy(model).eval().requires_grad_(False)


def add_lora(model: CLIPModel, cfg: ClipLora):
    """peft LoRA on the modules named in `cfg.target_modules` of both towers; only LoRA weights train."""
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                        target_modules=list(cfg.target_modules))
    return get_peft_model(model, config)


def merged(peft_model) -> CLIPModel:
    """A plain CLIPModel with the LoRA deltas folded into the base weights (loadable without peft)."""
    return peft_model.merge_and_unload().eval()
