"""Safe-CLIP's objective (Poppi et al., ECCV 2024): eight terms that redirect unsafe inputs to their safe
counterparts while keeping safe inputs where the reference model put them.

Follows the released code (aimagelab/safe-clip, `training/train.py`, `training/losses.py`): cosine distance on
raw projected embeddings, symmetric InfoNCE with a fixed logit scale over in-batch negatives of the other side,
weights normalised to sum 1 and the total divided by the number of terms. Reference embeddings are targets
only: they are detached here, whichever model produced them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from safeclip.methods.quadruples import reference_embeds

# Term order of the paper's weights (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5). "cos": 1 - cos to the
# reference's *safe* embedding of the same modality; "nce": InfoNCE against the reference's safe embedding of
# the other modality. Stable names: they become metric keys.
TERMS: tuple[str, ...] = (
    "cos.text_safe",     # T(t)  <-> T0(t)   preservation
    "cos.text_unsafe",   # T(t*) <-> T0(t)   redirection
    "cos.image_safe",    # V(v)  <-> V0(v)   preservation
    "cos.image_unsafe",  # V(v*) <-> V0(v)   redirection
    "nce.text_safe",     # T(t)  <-> V0(v)   preservation
    "nce.text_unsafe",   # T(t*) <-> V0(v)   redirection
    "nce.image_safe",    # V(v)  <-> T0(t)   preservation
    "nce.image_unsafe",  # V(v*) <-> T0(t)   redirection (the largest weight)
)
LAMBDAS: tuple[float, ...] = (0.1, 0.1, 0.1, 0.2, 0.25, 0.25, 0.25, 0.5)


def cosine_distance(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(x_i, target_i)); the target side gets no gradient."""
    return (1 - F.cosine_similarity(x, target.detach(), dim=-1)).mean()


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_rows(t: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Every process's rows of `t`, in rank order (each process must hold the same number of rows).

    `with_grad` uses the autograd-aware all_gather: each process's loss then sends gradients to every
    process's rows, which DDP's gradient averaging turns into exactly the gradient of the global-batch loss.
    """
    import torch.distributed as dist

    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t.contiguous()))
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def symmetric_infonce(x: torch.Tensor, target: torch.Tensor, logit_scale: float, gather: bool = False
                      ) -> torch.Tensor:
    """0.5 * (CE(s * x @ y.T, i) + CE(s * y @ x.T, i)) on L2-normalised rows; row i of x pairs with row i of y.

    Negatives are the other rows of the batch given. Under data parallelism each process passes its own rows,
    so without `gather` the negatives are per device and the loss changes with the number of processes at a
    fixed global batch. With `gather`, every process scores its own rows against the rows of all processes:
    the mean of the processes' losses, and the DDP-averaged gradient, equal the single-process ones.
    """
    x = F.normalize(x, dim=-1)
    y = F.normalize(target.detach(), dim=-1)
    rank, world = _world()
    if gather and world > 1:
        labels = torch.arange(x.shape[0], device=x.device) + rank * x.shape[0]
        x_all, y_all = all_rows(x, with_grad=True), all_rows(y, with_grad=False)
        return 0.5 * (F.cross_entropy(logit_scale * x @ y_all.T, labels)
                      + F.cross_entropy(logit_scale * y @ x_all.T, labels))
    labels = torch.arange(x.shape[0], device=x.device)
    logits = logit_scale * x @ y.T
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def normalised_weights(lambdas: Sequence[float]) -> list[float]:
    if len(lambdas) != len(TERMS):
        raise ValueError(f"lambdas: expected {len(TERMS)} weights in the order {TERMS}, got {len(lambdas)}")
    total = float(sum(lambdas))
    if not math.isfinite(total) or total <= 0 or any(w < 0 for w in lambdas):
        raise ValueError(f"lambdas: weights must be non-negative with a positive sum, got {list(lambdas)}")
    return [w / total for w in lambdas]


def safe_clip_loss(text_safe: torch.Tensor, text_unsafe: torch.Tensor, image_safe: torch.Tensor,
                   image_unsafe: torch.Tensor, ref_text_safe: torch.Tensor, ref_image_safe: torch.Tensor,
                   lambdas: Sequence[float] = LAMBDAS, logit_scale: float = 100.0, gather: bool = False
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and the eight terms, from projected embeddings T(t), T(t*), V(v), V(v*), T0(t), V0(v): [N, d].

    total = sum_k (lambda_k / sum(lambda)) * term_k / 8, as in the released training script.
    """
    weights = normalised_weights(lambdas)
    values = (
        cosine_distance(text_safe, ref_text_safe),
        cosine_distance(text_unsafe, ref_text_safe),
        cosine_distance(image_safe, ref_image_safe),
        cosine_distance(image_unsafe, ref_image_safe),
        symmetric_infonce(text_safe, ref_image_safe, logit_scale, gather),
        symmetric_infonce(text_unsafe, ref_image_safe, logit_scale, gather),
        symmetric_infonce(image_safe, ref_text_safe, logit_scale, gather),
        symmetric_infonce(image_unsafe, ref_text_safe, logit_scale, gather),
    )
    terms = dict(zip(TERMS, values, strict=True))
    total = sum(w * v for w, v in zip(weights, values, strict=True)) / len(TERMS)
    return total, terms


class SafeClipObjective:
    """The loss of one batch of quadruples for a (LoRA) CLIP, with T0/V0 from `reference`.

    `reference` is the frozen copy, or, for `stopgrad_current`, the model being trained itself: then its
    outputs are taken under no_grad in train mode (dropout on), as the released script does. A batch that
    carries the frozen copy's embeddings (ref_* rows) uses them instead of running it.
    """

    reference_sides: tuple[str, ...] = ("safe",)  # the quadruple sides whose T0/V0 the loss reads

    def __init__(self, lambdas: Sequence[float], logit_scale: float, gather: bool = False):
        normalised_weights(lambdas)  # fail at start, not at the first step
        self.lambdas, self.logit_scale, self.gather = list(lambdas), logit_scale, gather

    def __call__(self, model, reference, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        n = batch["safe_input_ids"].shape[0]
        # One forward of both captions and both images: under DDP every trained weight is used exactly once.
        out = model(input_ids=torch.cat([batch["safe_input_ids"], batch["unsafe_input_ids"]]),
                    attention_mask=torch.cat([batch["safe_attention_mask"], batch["unsafe_attention_mask"]]),
                    pixel_values=torch.cat([batch["safe_pixels"], batch["unsafe_pixels"]]))
        ref_text, ref_image = reference_embeds(reference, batch, self.reference_sides)
        return safe_clip_loss(out.text_embeds[:n], out.text_embeds[n:], out.image_embeds[:n], out.image_embeds[n:],
                              ref_text, ref_image, self.lambdas, self.logit_scale, self.gather and model.training)
