"""The fine-tuning loop shared by the trained methods: LoRA on both towers, Adam (constant or cosine lr), validation
every few steps with early stopping, resumable checkpoints, and a merged CLIPModel at the end.

Data parallel (accelerate/DDP): each process takes a contiguous slice of the global batch and its in-batch
InfoNCE negatives are the rows of that slice only, so at a fixed global batch the loss has fewer negatives as
the number of processes grows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from safeclip.clip.model import ClipBundle
from safeclip.clip.training import TrainState, check_finite, global_batch, local_slice, lr_factor
from safeclip.eval.retrieval import recall_at_k
from safeclip.methods.lora import add_lora, frozen_copy, merged
from safeclip.methods.quadruples import Quadruples, embed_reference
from safeclip.params import ClipLora

Objective = Callable[[torch.nn.Module, torch.nn.Module, dict], tuple[torch.Tensor, dict]]


@dataclass
class Schedule:
    learning_rate: float
    batch_size: int
    steps: int
    eval_every: int
    patience: int
    keep: str  # last | best_recall | best_loss
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the last step)


@dataclass
class TrainResult:
    model: object  # merged CLIPModel
    steps: int
    stopped_early: bool
    curve: list[dict] = field(default_factory=list)
    final_terms: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def embed_quadruples(model, q: Quadruples, batch_size: int, device) -> dict[str, torch.Tensor]:
    """Normalised T(t), T(t*), V(v), V(v*) of every quadruple, in eval mode."""
    parts: dict[str, list[torch.Tensor]] = {"t": [], "t_star": [], "v": [], "v_star": []}
    for a in range(0, len(q), batch_size):
        b = q.batch(range(a, min(a + batch_size, len(q))), device)
        safe = model(input_ids=b["safe_input_ids"], attention_mask=b["safe_attention_mask"],
                     pixel_values=b["safe_pixels"])
        unsafe = model(input_ids=b["unsafe_input_ids"], attention_mask=b["unsafe_attention_mask"],
                       pixel_values=b["unsafe_pixels"])
        for k, v in (("t", safe.text_embeds), ("v", safe.image_embeds), ("t_star", unsafe.text_embeds),
                     ("v_star", unsafe.image_embeds)):
            parts[k].append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def recall_sum(e: dict[str, torch.Tensor]) -> float:
    """R@1 summed over S->V, V->S, S->G, G->S, U->V, V->U (the released validation; U<->G left out)."""
    idx = range(len(e["t"]))
    pairs = (("t", "v"), ("v", "t"), ("t", "v_star"), ("v_star", "t"), ("t_star", "v"), ("v", "t_star"))
    return sum(recall_at_k(e[a], e[b], idx, ks=(1,))[1] for a, b in pairs)


@torch.no_grad()
def validate(model, reference, objective: Objective, q: Quadruples, batch_size: int, device) -> dict[str, float]:
    model.eval()
    losses, weights = [], []
    for a in range(0, len(q), batch_size):
        b = q.batch(range(a, min(a + batch_size, len(q))), device)
        loss, _ = objective(model, reference, b)
        losses.append(float(loss) * len(b["safe_input_ids"]))
        weights.append(len(b["safe_input_ids"]))
    result = {"val_loss": sum(losses) / max(1, sum(weights)),
              "val_recall_sum": recall_sum(embed_quadruples(model, q, batch_size, device))}
    model.train()
    return result


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "lora_" in k}


def finetune(bundle: ClipBundle, objective: Objective, train: Quadruples, val: Quadruples, lora: ClipLora,
             schedule: Schedule, reference_mode: str, seed: int, accelerator, state: TrainState, ckpt_dir: Path,
             log: logging.Logger, name: str, sampler: Callable[[int], np.ndarray] | None = None) -> TrainResult:
    """Train LoRA on `objective`; `sampler(step)` gives the global batch's indices into `train` (default:
    shuffled epochs over all of it). Resumes from `state` when it matches this run. With a frozen reference,
    `train.reference` and `val.reference` are set to its embeddings of the sides `objective.reference_sides`."""
    if sampler is None:
        def sampler(step: int) -> np.ndarray:
            return global_batch(step, len(train), schedule.batch_size, seed)
    frozen = frozen_copy(bundle.model) if reference_mode == "frozen" else None
    model = add_lora(bundle.model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("%s: %d trainable LoRA parameters of %d", name, sum(p.numel() for p in trainable),
             sum(p.numel() for p in model.parameters()))
    opt = torch.optim.Adam(trainable, lr=schedule.learning_rate)  # no weight decay (the paper's)
    # Not through accelerator.prepare: its scheduler wrapper steps num_processes times per optimizer step (it
    # assumes per-process batches); our steps are global, so the schedule must advance once per step anywhere.
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule.lr_schedule, schedule.steps))
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(lr_sched)
    raw = accelerator.unwrap_model(model)
    device = accelerator.device
    if frozen is not None:
        frozen.to(device)
        sides = getattr(objective, "reference_sides", ())
        if sides:  # the frozen copy's T0/V0 once per quadruple, not a forward per step (~12-30% of a CPU step)
            for q in (train, val):
                q.reference = embed_reference(frozen, q, sides, schedule.batch_size, device, accelerator.autocast)
    reference = frozen if frozen is not None else raw  # stopgrad_current: the live model, under no_grad
    progress = state.load() or {"step": 0, "curve": [], "evals": [], "best": {}, "bad_evals": 0}
    best_path = ckpt_dir / "best_lora.safetensors"
    step, stopped_early = progress["step"], False
    terms: dict[str, float] = {}
    model.train()
    bar = tqdm(range(step, schedule.steps), desc=name, disable=not accelerator.is_main_process, mininterval=10)
    for step in bar:
        idx = local_slice(sampler(step), accelerator.process_index, accelerator.num_processes)
        with accelerator.autocast():  # mixed precision covers the reference's forward too, not only `model`'s
            loss, parts = objective(model, reference, train.batch(idx, device))
        check_finite(loss, step, parts)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        lr_sched.step()
        terms = {k: float(v.detach()) for k, v in parts.items()}
        value = float(loss.detach())
        if step % 10 == 0:
            progress["curve"].append({"step": step + 1, "train_loss": value, **terms})
        done = step + 1
        if done % schedule.eval_every == 0 or done == schedule.steps:
            ev = validate(model, reference, objective, val, schedule.batch_size, device)
            improved = [k for k, better in (("val_loss", lambda a, b: a < b), ("val_recall_sum", lambda a, b: a > b))
                        if k not in progress["best"] or better(ev[k], progress["best"][k])]
            for k in improved:
                progress["best"][k] = ev[k]
            keep_key = {"best_recall": "val_recall_sum", "best_loss": "val_loss"}.get(schedule.keep)
            if keep_key in improved and accelerator.is_main_process:
                save_file(lora_state(raw), str(best_path))
            progress["bad_evals"] = 0 if improved else progress["bad_evals"] + 1
            progress["evals"].append({"step": done, **ev})
            progress["curve"].append({"step": done, "train_loss": value, **terms, **ev})
            progress["step"] = done
            log.info("step %d: loss %.4f, val loss %.4f, val recall-sum %.3f%s", done, value, ev["val_loss"],
                     ev["val_recall_sum"], "" if improved else f" (no improvement x{progress['bad_evals']})")
            stopped_early = progress["bad_evals"] >= schedule.patience
            if done < schedule.steps and not stopped_early:
                state.save(progress)
            if stopped_early:
                log.info("early stop at step %d: %d validations without improvement", done, schedule.patience)
                break
    raw = accelerator.unwrap_model(model)
    if schedule.keep != "last" and best_path.exists():
        raw.load_state_dict(load_file(str(best_path)), strict=False)
        log.info("keeping the %s weights", schedule.keep)
    last_eval = progress["evals"][-1] if progress["evals"] else {}
    return TrainResult(model=merged(raw), steps=progress["step"], stopped_early=stopped_early,
                       curve=progress["curve"], final_terms=terms, last_eval=last_eval)
