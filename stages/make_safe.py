"""make_safe@<method>: make the base CLIP safe with one method -> models/safe/<method> (a merged CLIPModel).

    python -m safeclip.launch stages.make_safe --method safe_clip
"""

from pathlib import Path

import torch

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.clip.model import load_clip
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.io import write_metrics, write_plot_csv
from safeclip.methods.quadruples import load_quadruples
from safeclip.methods.safe_clip import SafeClipObjective
from safeclip.methods.trainer import Schedule, finetune
from safeclip.runtime import scaled
from safeclip.stage import entry_point, option, start

METHODS = ["safe_clip"]


@entry_point
def main() -> None:
    method = option("method", METHODS)
    params, log = start(f"make_safe@{method}")
    cfg = getattr(params.make_safe, method)
    bundle = load_clip("models/base_clip")
    train, no_image = load_quadruples("data/visu/train.parquet", bundle)
    val, _ = load_quadruples("data/visu/val.parquet", bundle)
    if no_image:
        log.warning("%d training rows have no unsafe image and are left out", no_image)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    steps = cfg.max_steps if cfg.max_steps is not None else cfg.max_epochs * steps_per_epoch
    steps = scaled(steps, params.base.scale, 10)
    schedule = Schedule(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, steps=steps,
                        eval_every=min(cfg.eval_every, steps), patience=cfg.patience, keep=cfg.keep)
    log.info("%s: %d training quadruples, %d validation, %d steps (%.1f epochs) at batch %d", method, len(train),
             len(val), steps, steps / steps_per_epoch, cfg.batch_size)
    objective = SafeClipObjective(cfg.lambdas, cfg.logit_scale)
    accelerator = make_accelerator(params.base)
    ckpt = Path(f"checkpoints/make_safe/{method}")
    fp = fingerprint("make_safe", method, cfg.model_dump(), params.base.model_dump(),
                     file_digest("models/base_clip"), file_digest("data/visu/train.parquet"),
                     file_digest("data/visu/val.parquet"))
    state = TrainState(accelerator, ckpt, fp, log)
    torch.manual_seed(params.base.seed)
    result = finetune(bundle, objective, train, val, cfg.lora, schedule, cfg.reference, params.base.seed,
                      accelerator, state, ckpt, log, method)
    if not accelerator.is_main_process:
        return
    bundle.model = result.model
    bundle.save(f"models/safe/{method}")
    write_metrics(f"metrics/make_safe/{method}.json", {
        f"make_safe.{method}.steps": result.steps, f"make_safe.{method}.stopped_early": int(result.stopped_early),
        f"make_safe.{method}.train_quadruples": len(train),
        **{f"make_safe.{method}.final.{k}": v for k, v in result.final_terms.items()},
        **{f"make_safe.{method}.{k}": v for k, v in result.last_eval.items() if k != "step"}})
    write_plot_csv(f"plots/make_safe/{method}.csv", result.curve)
    log.info("%s: %d steps, saved models/safe/%s", method, result.steps, method)


if __name__ == "__main__":
    main()
