"""SFT of the rewriter: prompt/completion pairs from the curated data, full fine-tuning or LoRA."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from safeclip.llm.template import prompt_for
from safeclip.llm.training import common_args
from safeclip.params import Base, Lora, Sft


def prompt_completion(pairs: pa.Table) -> Dataset:
    """trl's prompt-completion format: the loss covers the completion only; trl appends EOS."""
    return Dataset.from_dict({"prompt": [prompt_for(s) for s in pairs.column("safe").to_pylist()],
                              "completion": pairs.column("unsafe").to_pylist()})


def lora_config(cfg: Lora) -> LoraConfig:
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      task_type="CAUSAL_LM")


def build_sft_trainer(model, tokenizer, train: Dataset, val: Dataset, cfg: Sft, base: Base, ckpt_dir: Path,
                      epochs: float) -> SFTTrainer:
    args = SFTConfig(num_train_epochs=epochs, per_device_train_batch_size=cfg.batch_size,
                     per_device_eval_batch_size=cfg.batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
                     lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, max_length=cfg.max_length,
                     eval_strategy="steps", eval_steps=cfg.save_steps, completion_only_loss=True,
                     **common_args(base, ckpt_dir, save_steps=cfg.save_steps, logging_steps=cfg.logging_steps))
    peft_config = lora_config(cfg.lora) if cfg.finetune == "lora" else None
    return SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val, processing_class=tokenizer,
                      peft_config=peft_config)


def merged_model(trainer):
    """The trained model as a plain transformers model (LoRA merged), ready for save_pretrained."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()
