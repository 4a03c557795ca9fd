"""World base CLIP: contrastive pretraining on the training quadruples' safe *and* unsafe pairs, like web CLIP.

The base must know the unsafe concepts (retrieve unsafe images for unsafe text) before it can be made safe.
Only training scenes are used (the test scenes are held out of everything), each re-rendered with several
nuisance seeds: the world's data augmentation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from safeclip.clip.model import ClipBundle, tokenize
from safeclip.clip.training import TrainState, check_finite, global_batch, local_slice
from safeclip.data.captions import stable_seed
from safeclip.io import InputError
from safeclip.params import WorldClip
from safeclip.world.grammar import caption
from safeclip.world.render import RenderConfig, render
from safeclip.world.scene import Scene


def pretraining_pool(rows: Sequence[dict], renders: int, rcfg: RenderConfig, seed: int, where: str
                     ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(distinct captions, caption index per image, uint8 images [N, H, W, 3]) from visu rows' scenes.

    A row's safe and unsafe scenes share each render seed, as the minimal pairs of the dataset do.
    """
    captions: dict[str, int] = {}
    labels, images = [], []
    for i, row in enumerate(rows):
        scenes = []
        for field in ("scene", "nsfw_scene"):
            if not row.get(field):
                raise InputError(f"{where}: row {i} ({row.get('id')}): field {field!r} is empty; world "
                                 "pretraining re-renders scenes, so it needs world-made visu rows")
            scenes.append(Scene.from_json(row[field]))
        for r in range(renders):
            rseed = stable_seed(seed, "base_clip", row["id"], r)
            for scene in scenes:
                labels.append(captions.setdefault(caption(scene), len(captions)))
                images.append(render(scene, rseed, rcfg))
    return list(captions), np.asarray(labels), np.stack(images)


def normalise_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 3, H, W], as CLIPImageProcessor does when no resize is needed (rescale, norm)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def multi_positive_infonce(text: torch.Tensor, image: torch.Tensor, labels: torch.Tensor,
                           logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every in-batch pair with the same caption is a positive (soft targets).

    World captions repeat (the same scene re-rendered), so one-hot targets would push identical captions apart.
    """
    logits = logit_scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-targets * F.log_softmax(logits.T, 1), 1).mean())


def cosine_with_warmup(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(bundle: ClipBundle, captions: list[str], labels: np.ndarray, images: np.ndarray, cfg: WorldClip,
             steps: int, seed: int, accelerator, state: TrainState, log: logging.Logger) -> list[dict]:
    """Train in place; returns the loss curve rows (step, loss, logit_scale)."""
    model = bundle.model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))
    sched = cosine_with_warmup(opt, max(1, int(cfg.warmup_ratio * steps)), steps)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    raw = accelerator.unwrap_model(model)
    tokens = tokenize(bundle.tokenizer, captions)
    mean, std = bundle.image_processor.image_mean, bundle.image_processor.image_std
    progress = state.load() or {"step": 0, "curve": []}
    curve = progress["curve"]
    max_log_scale = math.log(cfg.max_logit_scale)
    model.train()
    bar = tqdm(range(progress["step"], steps), desc="base_clip", disable=not accelerator.is_main_process,
               mininterval=10)
    for step in bar:
        idx = local_slice(global_batch(step, len(labels), cfg.batch_size, seed), accelerator.process_index,
                          accelerator.num_processes)
        lab = torch.from_numpy(labels[idx])
        uniq, inverse = torch.unique(lab, return_inverse=True)
        batch = {k: v[uniq].to(accelerator.device) for k, v in tokens.items()}  # each distinct caption once
        pixels = normalise_pixels(images[idx], mean, std).to(accelerator.device)
        # One forward through the (possibly DDP-wrapped) model, so gradients are synchronised across processes.
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels)
        text, image = out.text_embeds[inverse], out.image_embeds
        loss = multi_positive_infonce(text, image, lab.to(accelerator.device), raw.logit_scale.exp())
        check_finite(loss, step, {"loss": loss})
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            raw.logit_scale.clamp_(max=max_log_scale)
        if step % 10 == 0 or step == steps - 1:
            value = float(loss.detach())
            curve.append({"step": step + 1, "train_loss": value, "logit_scale": float(raw.logit_scale.detach().exp())})
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if (step + 1) % cfg.save_every == 0 and step + 1 < steps:
            state.save({"step": step + 1, "curve": curve})
            log.info("step %d/%d: loss %.4f (checkpoint saved)", step + 1, steps, float(loss.detach()))
    model.eval()
    return curve
