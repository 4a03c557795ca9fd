"""UWM, Unsafe Weights Manipulation (D'Inca et al., WACV 2026): make CLIP safer without training by negating
the few weights of chosen linear layers that carry much more activation flow for unsafe inputs than for their
paired safe ones.

Scoring follows the paper's Eq. 8-10 as the released code computes them (Moreno98/UWM): per calibration pair
the ratio psi_unsafe / psi_safe, averaged over pairs (the paper writes a ratio of means; the code, and this
module, a mean of per-pair ratios).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

EPS = 1e-8


def _flow_factors(weight: torch.Tensor, inputs: torch.Tensor, token_mask: torch.Tensor | None,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """psi_n[j, k] = out_n[j] * in_n[k] / sigma_n[k] factorises into a d_out and a d_in vector per sample:
    returns (out [n, d_out], in / sigma [n, d_in]).

    a_nk: L2 norm over the (unmasked) tokens of input feature k; sigma_nk: its std over those tokens
    (unbiased, torch's default); in_nk = a_nk * mean_j |W_jk|; out_nj = mean_k a_nk |W_jk|.
    """
    x = inputs.double()
    if token_mask is None:
        token_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    m = token_mask.to(x.device).bool().unsqueeze(-1).double()  # [n, tokens, 1]
    count = m.sum(dim=1)  # [n, 1]
    if bool((count < 2).any()):
        raise ValueError("UWM needs at least 2 unmasked tokens per sample to take a std over tokens")
    a = (x.square() * m).sum(dim=1).sqrt()  # [n, d_in]
    mean = (x * m).sum(dim=1) / count
    sigma = (((x - mean.unsqueeze(1)) ** 2 * m).sum(dim=1) / (count - 1)).sqrt()
    w = weight.detach().abs().double()  # [d_out, d_in]
    inflow = a * w.mean(dim=0)  # [n, d_in]
    outflow = a @ w.T / w.shape[1]  # [n, d_out]
    return outflow, inflow / (sigma + eps)


def pair_ratio_sum(weight: torch.Tensor, safe_inputs: torch.Tensor, unsafe_inputs: torch.Tensor,
                   token_mask_safe: torch.Tensor | None = None, token_mask_unsafe: torch.Tensor | None = None,
                   eps: float = EPS) -> torch.Tensor:
    """sum over pairs n of psi_unsafe_n / psi_safe_n, shaped like `weight` (float64), for streaming sums.

    The ratio factorises per pair into (out_u / out_s)[j] * (in_u / in_s)[k], so the sum over pairs is one
    [d_out, n] @ [n, d_in] product, never n weight-sized tensors. Safe factors are floored at eps: a safe
    input that carries no flow at all would otherwise divide by zero.
    """
    if safe_inputs.shape != unsafe_inputs.shape:
        raise ValueError(f"UWM pairs: safe inputs {tuple(safe_inputs.shape)} and unsafe inputs "
                         f"{tuple(unsafe_inputs.shape)} must have the same shape [pairs, tokens, d_in]")
    if safe_inputs.shape[-1] != weight.shape[1]:
        raise ValueError(f"UWM: inputs have {safe_inputs.shape[-1]} features, the layer takes {weight.shape[1]}")
    out_s, in_s = _flow_factors(weight, safe_inputs, token_mask_safe, eps)
    out_u, in_u = _flow_factors(weight, unsafe_inputs, token_mask_unsafe, eps)
    return (out_u / out_s.clamp_min(eps)).T @ (in_u / in_s.clamp_min(eps))


def uwm_layer_scores(weight: torch.Tensor, safe_inputs: torch.Tensor, unsafe_inputs: torch.Tensor,
                     token_mask_safe: torch.Tensor | None = None, token_mask_unsafe: torch.Tensor | None = None,
                     magnitude_prior: bool = False, eps: float = EPS) -> torch.Tensor:
    """UWM score of every weight of a linear layer (shaped like `weight` [d_out, d_in]): the mean over the
    calibration pairs of psi_unsafe / psi_safe, times |W| with the magnitude prior (the text tower's).

    `safe_inputs` / `unsafe_inputs`: [n_pairs, tokens, d_in] activations entering the layer, row n of one
    paired with row n of the other; token masks [n_pairs, tokens] mark the tokens to use (text: non-padding).
    """
    scores = pair_ratio_sum(weight, safe_inputs, unsafe_inputs, token_mask_safe, token_mask_unsafe, eps)
    scores = scores / safe_inputs.shape[0]
    if magnitude_prior:
        scores = scores * weight.detach().abs().double()
    return scores.to(weight.dtype)


def top_mass_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """The highest-scoring weights that together hold the top `tau` of the layer's score mass: scores are
    normalised to sum 1, sorted ascending, and every weight whose cumulative sum lies above 1 - tau is taken
    (the released code's rule; the weight that crosses the line is taken, so the set holds >= tau)."""
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    flat = scores.detach().double().flatten()
    if bool((flat < 0).any()) or not bool(torch.isfinite(flat).all()):
        raise ValueError("UWM scores must be finite and non-negative")
    total = flat.sum()
    if float(total) <= 0:
        raise ValueError("UWM scores sum to 0: the layer saw no activation")
    order = torch.argsort(flat / total, stable=True)
    cumulative = torch.cumsum((flat / total)[order], dim=0)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order[cumulative > 1 - tau + 1e-12]] = True
    return chosen.view_as(scores)


@torch.no_grad()
def manipulate(layer: nn.Linear, mask: torch.Tensor, alpha: float) -> int:
    """W[mask] *= alpha in place (biases untouched); returns how many weights changed."""
    layer.weight[mask.to(layer.weight.device)] *= alpha
    return int(mask.sum())


def target_layers(tower: nn.Module, suffixes: Sequence[str]) -> dict[str, nn.Linear]:
    """Linear modules of `tower` whose dotted name ends with one of `suffixes` (e.g. `out_proj`, `fc2`)."""
    found = {name: m for name, m in tower.named_modules()
             if isinstance(m, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)}
    if not found:
        raise ValueError(f"UWM: no linear layer of {type(tower).__name__} is named *{'/'.join(suffixes)}")
    return found


@contextmanager
def captured_inputs(layers: dict[str, nn.Linear]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward pre-hooks that record the input of each layer on the latest forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0].detach()))
               for name, m in layers.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@dataclass
class ScoreSums:
    """Running sums of per-pair ratios for each layer, so calibration streams over any number of batches."""
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    pairs: int = 0

    def add(self, weights: dict[str, torch.Tensor], safe: dict[str, torch.Tensor], unsafe: dict[str, torch.Tensor],
            mask_safe: torch.Tensor | None, mask_unsafe: torch.Tensor | None, eps: float) -> None:
        for name, w in weights.items():
            part = pair_ratio_sum(w, safe[name], unsafe[name], mask_safe, mask_unsafe, eps).cpu()
            self.sums[name] = self.sums[name] + part if name in self.sums else part
        self.pairs += next(iter(safe.values())).shape[0]

    def scores(self, weights: dict[str, torch.Tensor], magnitude_prior: bool) -> dict[str, torch.Tensor]:
        out = {}
        for name, s in self.sums.items():
            score = s / max(1, self.pairs)
            out[name] = score * weights[name].detach().abs().double().cpu() if magnitude_prior else score
        return out


@torch.no_grad()
def calibrate_tower(forward, layers: dict[str, nn.Linear], batches: Iterable[tuple[dict, dict]], eps: float,
                    magnitude_prior: bool) -> dict[str, torch.Tensor]:
    """Scores for `layers` from (safe inputs, unsafe inputs) batches; `forward(**inputs)` runs the tower and
    `attention_mask`, when present in the inputs, masks padding tokens out of the token statistics."""
    sums = ScoreSums()
    weights = {n: m.weight for n, m in layers.items()}
    with captured_inputs(layers) as seen:
        for safe_in, unsafe_in in batches:
            forward(**safe_in)
            safe = dict(seen)
            forward(**unsafe_in)
            unsafe = dict(seen)
            sums.add(weights, safe, unsafe, safe_in.get("attention_mask"), unsafe_in.get("attention_mask"), eps)
    return sums.scores(weights, magnitude_prior)


def calibration_indices(n_items: int, n_pairs: int, seed: int) -> np.ndarray:
    """A seeded random subset of `n_pairs` quadruples (all of them, shuffled, when there are fewer)."""
    return np.random.default_rng(seed).permutation(n_items)[:n_pairs]


def apply_uwm(towers: dict[str, tuple[dict[str, nn.Linear], dict[str, torch.Tensor]]], tau: float, alpha: float,
              log: logging.Logger | None = None) -> dict[str, dict[str, int]]:
    """Select per layer and manipulate; returns {tower.layer: {"negated": count, "weights": size}}."""
    record: dict[str, dict[str, int]] = {}
    for tower, (layers, scores) in towers.items():
        for name, layer in layers.items():
            mask = top_mass_mask(scores[name], tau)
            changed = manipulate(layer, mask, alpha)
            record[f"{tower}.{name}"] = {"negated": changed, "weights": layer.weight.numel()}
            if log:
                log.info("%s.%s: %d of %d weights x %g", tower, name, changed, layer.weight.numel(), alpha)
    return record
