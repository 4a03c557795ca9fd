"""What make_safe@<method> does for each method: load the base CLIP and the quadruples, make the model safe,
and return the merged CLIPModel with the metrics to record. The stage script only picks the runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from safeclip.checkpoint import file_digest, fingerprint
from safeclip.clip.model import ClipBundle, load_clip
from safeclip.clip.training import TrainState, make_accelerator
from safeclip.data.schemas import SAFER_TARGETS
from safeclip.io import InputError, atomic_path, read_parquet
from safeclip.methods.quadruples import Quadruples, load_quadruples
from safeclip.methods.safe_clip import SafeClipObjective
from safeclip.methods.safer_clip import CurriculumPlan, SaferClipObjective, attach_targets, easy_first_order
from safeclip.methods.trainer import Schedule, TrainResult, finetune
from safeclip.methods.uwm import apply_uwm, calibrate_tower, calibration_indices, target_layers
from safeclip.params import Params
from safeclip.runtime import compute_device, scaled

BASE_CLIP = "models/base_clip"
TRAIN, VAL = "data/visu/train.parquet", "data/visu/val.parquet"
SAFER_TARGETS_DIR = Path("data/safer_clip")


@dataclass
class MadeSafe:
    bundle: ClipBundle
    metrics: dict[str, float | int] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    is_main: bool = True


def _ckpt(method: str) -> Path:
    return Path(f"checkpoints/make_safe/{method}")


def _load_data(bundle: ClipBundle, log: logging.Logger) -> tuple[Quadruples, Quadruples]:
    train, no_image = load_quadruples(TRAIN, bundle)
    val, _ = load_quadruples(VAL, bundle)
    if no_image:
        log.warning("%d training rows have no unsafe image and are left out", no_image)
    return train, val


def _check_gather(method: str, gather: bool, batch_size: int, processes: int) -> None:
    """all_gather needs the same number of rows on every process: say so before any step runs."""
    if gather and batch_size % processes:
        raise InputError(f"params.yaml: make_safe.{method}.batch_size {batch_size} must be divisible by the "
                         f"{processes} processes when gather_negatives is on (or set it off)")


def _trained(method: str, result: TrainResult, bundle: ClipBundle, n_train: int, is_main: bool) -> MadeSafe:
    bundle.model = result.model
    metrics = {f"make_safe.{method}.steps": result.steps,
               f"make_safe.{method}.stopped_early": int(result.stopped_early),
               f"make_safe.{method}.train_quadruples": n_train,
               **{f"make_safe.{method}.final.{k}": v for k, v in result.final_terms.items()},
               **{f"make_safe.{method}.{k}": v for k, v in result.last_eval.items() if k != "step"}}
    return MadeSafe(bundle, metrics, result.curve, is_main)


def run_safe_clip(params: Params, log: logging.Logger) -> MadeSafe:
    method, cfg = "safe_clip", params.make_safe.safe_clip
    bundle = load_clip(BASE_CLIP)
    train, val = _load_data(bundle, log)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    steps = cfg.max_steps if cfg.max_steps is not None else cfg.max_epochs * steps_per_epoch
    steps = scaled(steps, params.base.scale, 10)
    schedule = Schedule(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, steps=steps,
                        eval_every=min(cfg.eval_every, steps), patience=cfg.patience, keep=cfg.keep,
                        lr_schedule=cfg.lr_schedule)
    log.info("%s: %d training quadruples, %d validation, %d steps (%.1f epochs) at batch %d", method, len(train),
             len(val), steps, steps / steps_per_epoch, cfg.batch_size)
    accelerator = make_accelerator(params.base)
    fp = fingerprint("make_safe", method, cfg.model_dump(), params.base.model_dump(), file_digest(BASE_CLIP),
                     file_digest(TRAIN), file_digest(VAL))
    state = TrainState(accelerator, _ckpt(method), fp, log)
    torch.manual_seed(params.base.seed)
    _check_gather(method, cfg.gather_negatives, cfg.batch_size, accelerator.num_processes)
    objective = SafeClipObjective(cfg.lambdas, cfg.logit_scale, cfg.gather_negatives)
    result = finetune(bundle, objective, train, val, cfg.lora, schedule,
                      cfg.reference, params.base.seed, accelerator, state, _ckpt(method), log, method)
    return _trained(method, result, bundle, len(train), accelerator.is_main_process)


def run_safer_clip(params: Params, log: logging.Logger) -> MadeSafe:
    method, cfg = "safer_clip", params.make_safe.safer_clip
    bundle = load_clip(BASE_CLIP)
    train, val = _load_data(bundle, log)
    targets = {}
    for split, q in (("train", train), ("val", val)):
        path = SAFER_TARGETS_DIR / f"{split}.parquet"
        targets[split] = attach_targets(q, read_parquet(path, SAFER_TARGETS).to_pylist(), str(path))
    plan = CurriculumPlan(easy_first_order(targets["train"]), cfg.curriculum, cfg.batch_size, params.base.seed)
    steps = plan.steps_for(cfg.epochs)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    steps = scaled(steps, params.base.scale, 10)
    schedule = Schedule(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, steps=steps,
                        eval_every=min(cfg.eval_every, steps), patience=cfg.patience, keep=cfg.keep,
                        lr_schedule=cfg.lr_schedule)
    partner = float(np.mean(train.targets == np.arange(len(train))))
    log.info("%s: %d training quadruples (%.1f%% redirected to their own partner), %d validation, %d steps at "
             "batch %d; curriculum phases of %s steps over %s pairs", method, len(train), 100 * partner, len(val),
             steps, cfg.batch_size, plan.phase_steps, plan.phase_sizes)
    accelerator = make_accelerator(params.base)
    fp = fingerprint("make_safe", method, cfg.model_dump(), params.base.model_dump(), file_digest(BASE_CLIP),
                     file_digest(TRAIN), file_digest(VAL), file_digest(SAFER_TARGETS_DIR))
    state = TrainState(accelerator, _ckpt(method), fp, log)
    torch.manual_seed(params.base.seed)
    _check_gather(method, cfg.gather_negatives, cfg.batch_size, accelerator.num_processes)
    objective = SaferClipObjective(cfg.weights, cfg.logit_scale, cfg.relative_scale, cfg.gather_negatives)
    result = finetune(bundle, objective, train, val, cfg.lora, schedule, cfg.reference, params.base.seed,
                      accelerator, state, _ckpt(method), log, method, sampler=plan)
    made = _trained(method, result, bundle, len(train), accelerator.is_main_process)
    made.metrics[f"make_safe.{method}.targets_own_partner"] = 100 * partner
    return made


def _uwm_batches(q: Quadruples, idx: np.ndarray, batch_size: int, tower: str, device: str = "cpu"):
    for a in range(0, len(idx), batch_size):
        b = q.batch(idx[a:a + batch_size], device)
        if tower == "text":
            yield ({"input_ids": b["safe_input_ids"], "attention_mask": b["safe_attention_mask"]},
                   {"input_ids": b["unsafe_input_ids"], "attention_mask": b["unsafe_attention_mask"]})
        else:
            yield {"pixel_values": b["safe_pixels"]}, {"pixel_values": b["unsafe_pixels"]}


def run_uwm(params: Params, log: logging.Logger) -> MadeSafe:
    """Calibrate (one forward pass per tower over the calibration pairs), select, negate. Scores are kept in
    the checkpoint folder under a fingerprint of what they depend on, so a tau/alpha sweep reuses them."""
    cfg = params.make_safe.uwm
    bundle = load_clip(BASE_CLIP)
    device = compute_device(params.base.device)
    model = bundle.model.eval().to(device)
    train, _ = load_quadruples(TRAIN, bundle)
    idx = calibration_indices(len(train), cfg.calibration_pairs, params.base.seed)
    edits = {"text": (model.text_model, cfg.text_layers, cfg.magnitude_prior_text),
             "vision": (model.vision_model, cfg.vision_layers, cfg.magnitude_prior_vision)}
    # a tower with no layers named is left as it is (the world edits the text tower alone)
    towers = {t: (module, target_layers(module, names), prior) for t, (module, names, prior) in edits.items() if names}
    fp = fingerprint("uwm-scores", cfg.calibration_pairs, cfg.batch_size, cfg.text_layers, cfg.vision_layers,
                     cfg.magnitude_prior_text, cfg.magnitude_prior_vision, cfg.eps, params.base.seed,
                     file_digest(BASE_CLIP), file_digest(TRAIN))
    cache = _ckpt("uwm") / f"scores-{fp[:16]}.safetensors"
    scores: dict[str, dict[str, torch.Tensor]] = {}
    if cache.exists():
        flat = load_file(str(cache))
        scores = {t: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(t + "/")} for t in towers}
        log.info("uwm: reusing the calibration scores in %s", cache)
    else:
        for tower, (module, layers, prior) in towers.items():
            batches = _uwm_batches(train, idx, cfg.batch_size, tower, device)
            scores[tower] = calibrate_tower(module, layers, batches, cfg.eps, prior)
        for old in cache.parent.glob("scores-*.safetensors") if cache.parent.exists() else ():
            old.unlink()
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save_file({f"{t}/{k}": v.contiguous() for t, s in scores.items() for k, v in s.items()}, str(tmp))
    log.info("uwm: %d calibration pairs of %d training quadruples", len(idx), len(train))
    record = apply_uwm({t: (layers, scores[t]) for t, (_m, layers, _p) in towers.items()}, cfg.tau, cfg.alpha, log)
    bundle.model = model.cpu()
    metrics: dict[str, float | int] = {"make_safe.uwm.calibration_pairs": len(idx)}
    for tower in edits:  # an untouched tower reads 0, so every run has the same metric names
        rows = {k: v for k, v in record.items() if k.startswith(tower + ".")}
        negated, size = sum(v["negated"] for v in rows.values()), sum(v["weights"] for v in rows.values())
        metrics[f"make_safe.uwm.mask.{tower}.negated"] = negated
        metrics[f"make_safe.uwm.mask.{tower}.percent"] = 100 * negated / size if size else 0.0
    for name, v in record.items():
        metrics[f"make_safe.uwm.mask.{name}.negated"] = v["negated"]
        metrics[f"make_safe.uwm.mask.{name}.percent"] = 100 * v["negated"] / v["weights"]
    return MadeSafe(bundle, metrics)


RUNNERS = {"safe_clip": run_safe_clip, "safer_clip": run_safer_clip, "uwm": run_uwm}
