"""What every CLIP training loop shares: the process layout, deterministic batches, resumable state.

Batches come from a per-epoch permutation seeded by (seed, epoch), so the data order at any step is a pure
function of the step: a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from safeclip.checkpoint import prepare_checkpoint_dir
from safeclip.io import write_json
from safeclip.params import Base
from safeclip.runtime import NonFiniteLoss


def make_accelerator(base: Base):
    from accelerate import Accelerator

    return Accelerator(cpu=base.device == "cpu", mixed_precision=base.mixed_precision)


def global_batch(step: int, n_items: int, batch_size: int, seed: int | Sequence[int]) -> np.ndarray:
    """Indices of the global batch at `step`: consecutive slices of a (seed, epoch) permutation, last partial
    slice dropped (InfoNCE wants full batches). `seed` may be a sequence (e.g. seed and curriculum phase)."""
    per_epoch = max(1, n_items // batch_size)
    epoch, k = divmod(step, per_epoch)
    key = [seed] if isinstance(seed, int) else list(seed)
    perm = np.random.default_rng([*key, epoch]).permutation(n_items)
    return perm[k * batch_size:(k + 1) * batch_size]


def lr_factor(kind: str, steps: int, warmup: int = 0) -> Callable[[int], float]:
    """The lr multiplier of step s (0-based): a linear warmup over `warmup` steps (none at 0) times 1
    throughout (`constant`) or a cosine from 1 that reaches 0 after the last step (`cosine`). For a LambdaLR
    registered for checkpointing, not passed through `accelerator.prepare` (its wrapper steps a scheduler once
    per process, and our steps are global)."""
    if kind == "constant":
        shape = lambda s: 1.0  # noqa: E731
    elif kind == "cosine":
        shape = lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / max(1, steps)))  # noqa: E731
    else:
        raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {kind!r}")
    if warmup <= 0:
        return shape
    return lambda s: min(1.0, (s + 1) / warmup) * shape(s)


def local_slice(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's share of the global batch: contiguous and equal, so the concatenation over ranks is the batch.

    A batch that does not split evenly (a training set smaller than the batch, an odd batch size) loses its last
    `len % world_size` rows: gathered negatives need every process to hold the same number of rows (gloo aborts
    on a size mismatch), and the mean of equal per-process means is the global batch's mean. One process keeps
    every row.
    """
    share = len(indices) // world_size
    return indices[rank * share:(rank + 1) * share]


def finite_on_every_process(finite: bool, device: torch.device | str = "cpu") -> bool:
    """True when every process of the job has a finite loss (one tiny all-reduce per step under DDP).

    A NaN in one process's batch must stop all of them: a process that stopped alone would leave the others
    waiting in the next gradient all-reduce until the process group times out.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return finite
    flag = torch.tensor([int(finite)], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def check_finite(loss: torch.Tensor, step: int, terms: dict[str, torch.Tensor | float]) -> None:
    value = float(loss.detach())
    if not finite_on_every_process(math.isfinite(value), loss.device):
        shown = {k: round(float(v.detach() if hasattr(v, 'detach') else v), 6) for k, v in terms.items()}
        where = "" if not math.isfinite(value) else " on another process"
        raise NonFiniteLoss(f"non-finite loss {value}{where} at step {step}; terms: {shown}. Nothing was saved "
                            "as final: lower the learning rate or check the inputs")


class TrainState:
    """accelerate's save_state (model, optimizer, scheduler, RNG) plus a progress record, in a checkpoint folder
    that is reused only when its fingerprint matches this run."""

    def __init__(self, accelerator, ckpt_dir: str | Path, fp: str, log: logging.Logger):
        self.acc, self.dir, self.log = accelerator, Path(ckpt_dir), log
        self.resumable = prepare_checkpoint_dir(self.dir, fp, log, accelerator.is_main_process)
        accelerator.wait_for_everyone()

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def load(self) -> dict | None:
        """The saved progress (and every prepared object restored), or None to start from scratch."""
        if not self.resumable:
            return None
        # A kill between the two renames of save() leaves the previous complete state in state.old.
        for d in (self.dir / "state", self.dir / "state.old"):
            if (d / "progress.json").exists():
                self.acc.load_state(str(d))
                info = json.loads((d / "progress.json").read_text())
                self.log.info("resuming from the checkpoint at step %d", info["step"])
                return info
        return None

    def save(self, progress: dict) -> None:
        """State and progress into a fresh folder, swapped in by rename: a kill leaves one complete state."""
        tmp, state, old = self.dir / "state.tmp", self.dir / "state", self.dir / "state.old"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            write_json(tmp / "progress.json", progress)
            if state.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(state, old)
            os.replace(tmp, state)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
