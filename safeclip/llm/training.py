"""trl training shared by base_llm pretraining, SFT and DPO: config, resume, NaN guard, loss curves."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import PrinterCallback, TrainerCallback, TrainerState

from safeclip.checkpoint import drop_incomplete_checkpoints, last_checkpoint, prepare_checkpoint_dir
from safeclip.clip.training import finite_on_every_process
from safeclip.params import Base
from safeclip.runtime import NonFiniteLoss

NOT_SAVED = "Nothing was saved as final: lower the learning rate or check the inputs"


class StopOnNonFinite(TrainerCallback):
    """Eval losses (and train losses, should one reach the logs) that are NaN/inf stop the run."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss", "eval_loss"):
            v = (logs or {}).get(key)
            if isinstance(v, float) and not math.isfinite(v):
                terms = {k: v for k, v in (logs or {}).items() if "loss" in k or "reward" in k}
                raise NonFiniteLoss(f"non-finite {key} at step {state.global_step}: {terms}. {NOT_SAVED}")


def _loss_terms(trainer) -> dict[str, float]:
    """The per-term figures trl recorded for the step that just ran (DPO: rewards, log-probs; SFT: accuracy)."""
    metrics = getattr(trainer, "_metrics", {}).get("train", {})
    return {k: round(float(v[-1]), 6) for k, v in metrics.items()
            if isinstance(v, list) and v and any(s in k for s in ("loss", "reward", "logps", "logits", "accuracy"))}


def guard_non_finite(trainer) -> None:
    """Check every training step's loss, before the optimizer step and any checkpoint.

    transformers' `logging_nan_inf_filter` (on by default) replaces a NaN step loss by the running mean in the
    logs, so a callback on the logged loss never sees it while the weights turn to NaN; the value training_step
    returns is the step's real loss. (All processes agree before one raises, so none is left waiting.)
    """
    inner = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        loss = inner(model, inputs, num_items_in_batch)
        value = float(loss.detach())
        if not finite_on_every_process(math.isfinite(value), loss.device):
            terms = {"loss": value, **_loss_terms(trainer)}
            where = "" if not math.isfinite(value) else " on another process"
            raise NonFiniteLoss(f"non-finite loss {value}{where} at step {trainer.state.global_step + 1}; terms: "
                                f"{terms}. {NOT_SAVED}")
        return loss

    trainer.training_step = training_step


class LogToLogger(TrainerCallback):
    """One line per logging step through the stage logger, instead of trl's printed dicts."""

    def __init__(self, log: logging.Logger):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            shown = {k: f"{v:.4g}" for k, v in logs.items() if isinstance(v, (int, float)) and k != "epoch"}
            self.log.info("step %d/%d %s", state.global_step, state.max_steps, shown)


def common_args(base: Base, ckpt_dir: Path, *, save_steps: int, logging_steps: int) -> dict:
    """Trainer arguments every stage shares: CPU/GPU, precision, checkpoints, quiet, seeded."""
    cpu = base.device == "cpu"
    return dict(output_dir=str(ckpt_dir), use_cpu=cpu, bf16=base.mixed_precision == "bf16",
                fp16=base.mixed_precision == "fp16", activation_checkpointing=False, report_to="none",
                save_strategy="steps", save_steps=save_steps, save_total_limit=1, logging_steps=logging_steps,
                seed=base.seed, data_seed=base.seed, disable_tqdm=True, dataloader_num_workers=0,
                log_level="warning")


def train_resumably(trainer, ckpt_dir: Path, fp: str, log: logging.Logger) -> None:
    """Resume from the last checkpoint when it was made under the same fingerprint, else start over."""
    state = trainer.accelerator.state
    log.info("process %d of %d (%s)", state.process_index, state.num_processes, state.distributed_type)
    resume = prepare_checkpoint_dir(ckpt_dir, fp, log, is_main=state.is_main_process)
    if resume and state.is_main_process:
        drop_incomplete_checkpoints(ckpt_dir, log)
    state.wait_for_everyone()
    ckpt = last_checkpoint(ckpt_dir) if resume else None
    trainer.remove_callback(PrinterCallback)
    if ckpt and _finished(Path(ckpt)):
        # resuming a finished run would take one extra step in transformers 5.23: load it as it ended instead
        log.info("training had finished in %s: loading it instead of training again", ckpt)
        trainer._load_from_checkpoint(ckpt)
        trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))
        return
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.add_callback(LogToLogger(log))
    trainer.add_callback(StopOnNonFinite())
    guard_non_finite(trainer)
    trainer.train(resume_from_checkpoint=ckpt)


def _finished(ckpt: Path) -> bool:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def loss_curve(log_history: list[dict]) -> list[dict]:
    """Per-step rows for the DVC plot: train loss, eval loss, learning rate (when logged at that step)."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = rows.setdefault(step, {"step": step})
        for src, dst in (("loss", "train_loss"), ("eval_loss", "eval_loss"), ("learning_rate", "learning_rate")):
            if src in entry:
                row[dst] = float(entry[src])
    # Steps with nothing logged (the end-of-training summary) are left out: a run loaded from its finished
    # checkpoint has no such entry, and the plot must not depend on how the run got there.
    return [rows[s] for s in sorted(rows) if len(rows[s]) > 1]


def last_value(log_history: list[dict], key: str) -> float | None:
    vals = [e[key] for e in log_history if key in e]
    return float(vals[-1]) if vals else None
