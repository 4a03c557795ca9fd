"""DPO of the rewriter with trl: sigmoid preference loss plus an SFT term on the chosen answer by default.

A prototype of the world found plain DPO at lr >= 2e-4 collapsing into unparseable text; the SFT term keeps
the model writing captions while the preference term moves it toward on-scene rewrites.
"""

from __future__ import annotations

import copy
from pathlib import Path

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from safeclip.llm.sft import lora_config
from safeclip.llm.training import common_args
from safeclip.params import Base, Dpo


def build_dpo_trainer(model, tokenizer, prefs: Dataset, cfg: Dpo, base: Base, ckpt_dir: Path,
                      epochs: float) -> DPOTrainer:
    args = DPOConfig(num_train_epochs=epochs, per_device_train_batch_size=cfg.batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
                     lr_scheduler_type=cfg.lr_scheduler, beta=cfg.beta, loss_type=list(cfg.loss_type),
                     loss_weights=list(cfg.loss_weights), max_length=cfg.max_length,
                     **common_args(base, ckpt_dir, save_steps=cfg.save_steps, logging_steps=cfg.logging_steps))
    lora = cfg.finetune == "lora"
    # full fine-tuning needs an explicit frozen copy as the reference; with LoRA the adapter-disabled model is it
    ref = None if lora else copy.deepcopy(model).eval().requires_grad_(False)
    return DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=prefs, processing_class=tokenizer,
                      peft_config=lora_config(cfg.lora) if lora else None)
