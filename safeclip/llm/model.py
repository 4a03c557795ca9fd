"""Base causal LM: a tiny Llama trained here on world text, or a hub id / local path (the paper's Llama-2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from safeclip.hub import POINTER, load_tokenizer, model_dir, write_pointer  # noqa: F401 (re-exported for the stages)
from safeclip.io import atomic_dir
from safeclip.llm.template import PROMPT
from safeclip.params import WorldLlm
from safeclip.runtime import compute_device
from safeclip.world.catalogue import OBJECTS
from safeclip.world.grammar import caption, vocabulary
from safeclip.world.scene import sample_scene


def world_corpus(n: int, seed: int, max_objects: int, positions: Sequence[str]) -> list[str]:
    """World 'web text': captions of random scenes over every object, safe and unsafe."""
    rng = np.random.default_rng(seed)
    return [caption(sample_scene(rng, tuple(OBJECTS), max_objects, positions)) for _ in range(n)]


def tokenizer_corpus() -> list[str]:
    return [" ".join(vocabulary()), PROMPT.format(safe="")]


def build_world_llm(cfg: WorldLlm, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                         num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                         max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_dtype(base) -> torch.dtype:
    """The precision the run computes in, and so what the merged LLMs are saved in (7B: 13.5 GB in bf16, 27 GB in
    fp32, and DVC caches each copy once more): base.mixed_precision on a GPU; fp32 on the CPU, where the LLM
    stages load, train and sample in fp32 whatever base.mixed_precision says (saving a model trained in fp32 as
    bf16 would only lose precision)."""
    if llm_device(base) == "cpu":
        return torch.float32
    return PRECISIONS.get(base.mixed_precision, torch.float32)


def llm_device(base) -> str:
    """Where an LLM stage samples and trains: base.device; on GPUs, this process's own one under
    `accelerate launch` (LOCAL_RANK), as the trainer will place it."""
    import os

    device = compute_device(base.device)
    return device if device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def llm_dtype(base, finetune: str) -> torch.dtype:
    """What to load an LLM in: fp32 on the CPU (the world, as before); on a GPU the run's precision when only
    adapters train (LoRA: peft keeps the adapters fp32) or nothing does (sampling). Full fine-tuning loads fp32:
    its optimizer needs fp32 master weights, and mixed precision autocasts the forward."""
    if llm_device(base) == "cpu" or finetune == "full":
        return torch.float32
    return run_dtype(base)


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """(model, tokenizer), safetensors only and never remote code."""
    d = model_dir(path, allow_pickle)
    tok = load_tokenizer(d)
    if tok.pad_token is None:  # Llama-2 has none; left-padded batches need one
        tok.pad_token = tok.unk_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, trust_remote_code=False,
                                                 use_safetensors=not allow_pickle)
    return model, tok


def save_model_dir(model, tokenizer, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Merge LoRA adapters if any, then write model and tokenizer (safetensors) as one atomic folder; `dtype`
    (the run's precision, see run_dtype) casts a copy, so the caller's model is left as it is."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if dtype is not None and next(model.parameters()).dtype != dtype:
        import copy

        model = copy.deepcopy(model).to(dtype)
    with atomic_dir(path) as out:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
