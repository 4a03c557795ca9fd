"""SafeR-CLIP (Yousaf et al., AAAI 2026): redirect each unsafe input to its *nearest* safe caption instead of
its fixed ViSU partner, with a relative loss whose only negative is the input's own unsafe counterpart, and an
easy-to-hard curriculum.

The paper's code and loss weights are not public (as of its AAAI 2026 version): the
formulas below are those of its slides; the text-side relative term is the "symmetric" one they mention, and
preservation is Safe-CLIP's (cosine to the reference plus InfoNCE against the other tower's reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from safeclip.clip.training import global_batch
from safeclip.io import InputError
from safeclip.methods.quadruples import reference_embeds
from safeclip.methods.safe_clip import cosine_distance, symmetric_infonce
from safeclip.params import SaferClipWeights

TERMS: tuple[str, ...] = tuple(SaferClipWeights.model_fields)  # stable names: they become metric keys


def relative_redirection(x: torch.Tensor, own_unsafe: torch.Tensor, safe_target: torch.Tensor,
                         scale: float = 1.0) -> torch.Tensor:
    """mean softplus(scale * (cos(x, own_unsafe) - cos(x, safe_target))): move x from its own unsafe
    counterpart toward its safe target, without pushing away any other (possibly related) safe item."""
    to_unsafe = F.cosine_similarity(x, own_unsafe.detach(), dim=-1)
    to_safe = F.cosine_similarity(x, safe_target.detach(), dim=-1)
    return F.softplus(scale * (to_unsafe - to_safe)).mean()


def safer_clip_loss(text_safe: torch.Tensor, text_unsafe: torch.Tensor, image_safe: torch.Tensor,
                    image_unsafe: torch.Tensor, ref_text_safe: torch.Tensor, ref_image_safe: torch.Tensor,
                    ref_text_unsafe: torch.Tensor, ref_image_unsafe: torch.Tensor, ref_text_target: torch.Tensor,
                    ref_image_target: torch.Tensor, weights: SaferClipWeights = SaferClipWeights(),
                    logit_scale: float = 100.0, relative_scale: float = 1.0, gather: bool = False
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and the eight terms from projected embeddings [N, d]: trained T(t), T(t*), V(v), V(v*);
    reference T0(t), V0(v), T0(t*), V0(v*), and the targets' T0(t^), V0(v^).

    total = sum_k (w_k / sum(w)) * term_k / 8, the same normalisation as Safe-CLIP's.
    """
    values = {
        "rel_text": relative_redirection(text_unsafe, ref_image_unsafe, ref_image_target, relative_scale),
        "rel_image": relative_redirection(image_unsafe, ref_text_unsafe, ref_text_target, relative_scale),
        "uni_text": cosine_distance(text_unsafe, ref_text_target),
        "uni_image": cosine_distance(image_unsafe, ref_image_target),
        "cos_text_safe": cosine_distance(text_safe, ref_text_safe),
        "cos_image_safe": cosine_distance(image_safe, ref_image_safe),
        "nce_text_safe": symmetric_infonce(text_safe, ref_image_safe, logit_scale, gather),
        "nce_image_safe": symmetric_infonce(image_safe, ref_text_safe, logit_scale, gather),
    }
    w = weights.model_dump()
    total_w = sum(w.values())
    if not math.isfinite(total_w) or total_w <= 0:
        raise ValueError(f"make_safe.safer_clip.weights: need a positive sum, got {w}")
    total = sum(w[k] / total_w * v for k, v in values.items()) / len(values)
    return total, values


class SaferClipObjective:
    """The loss of one batch (with target_* rows, see Quadruples.targets) for a (LoRA) CLIP and its reference."""

    reference_sides: tuple[str, ...] = ("safe", "unsafe")  # targets are safe rows of the same quadruples

    def __init__(self, weights: SaferClipWeights, logit_scale: float, relative_scale: float, gather: bool = False):
        self.weights, self.logit_scale, self.relative_scale = weights, logit_scale, relative_scale
        self.gather = gather

    def __call__(self, model, reference, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if "target_input_ids" not in batch:
            raise ValueError("SafeR-CLIP batches need redirection targets: set Quadruples.targets")
        n = batch["safe_input_ids"].shape[0]
        out = model(input_ids=torch.cat([batch["safe_input_ids"], batch["unsafe_input_ids"]]),
                    attention_mask=torch.cat([batch["safe_attention_mask"], batch["unsafe_attention_mask"]]),
                    pixel_values=torch.cat([batch["safe_pixels"], batch["unsafe_pixels"]]))
        # t, t*, t^ and v, v*, v^ through the reference in one pass (or the batch's cached rows)
        rt, rv = reference_embeds(reference, batch, ("safe", "unsafe", "target"))
        return safer_clip_loss(out.text_embeds[:n], out.text_embeds[n:], out.image_embeds[:n], out.image_embeds[n:],
                               rt[:n], rv[:n], rt[n:2 * n], rv[n:2 * n], rt[2 * n:], rv[2 * n:],
                               self.weights, self.logit_scale, self.relative_scale, self.gather and model.training)


def nearest_safe(unsafe: torch.Tensor, safe: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each unsafe caption embedding, the index of the most cosine-similar safe caption embedding (top-1;
    the lowest index on a tie) and that similarity. Chunked over queries so memory stays bounded."""
    if len(safe) == 0:
        raise ValueError("SafeR-CLIP needs at least one safe caption to redirect to")
    s = F.normalize(safe.float(), dim=-1)
    idx, sim = [], []
    for a in range(0, len(unsafe), chunk):
        q = F.normalize(unsafe[a:a + chunk].float(), dim=-1)
        best = (q @ s.T).max(dim=1)  # max returns the first maximal index
        idx.append(best.indices)
        sim.append(best.values)
    if not idx:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return torch.cat(idx).numpy().astype(np.int64), torch.cat(sim).numpy().astype(np.float32)


@dataclass
class CurriculumPlan:
    """Which quadruples each step trains on: epoch i (from 1) draws shuffled batches from the easiest
    `fractions[i-1]` of the pairs, every later epoch from all of them. A pure function of the step, so a
    resumed run sees the batches an uninterrupted one would.

    `easy_first` orders the quadruples from easiest (highest target similarity) to hardest.
    """
    easy_first: np.ndarray
    fractions: Sequence[float]
    batch_size: int
    seed: int

    def __post_init__(self):
        n = len(self.easy_first)
        sizes = [max(min(n, self.batch_size), round(f * n)) for f in self.fractions] + [n]
        self.phase_sizes = sizes
        self.phase_steps = [max(1, s // self.batch_size) for s in sizes[:-1]]  # one epoch each

    def steps_for(self, epochs: int) -> int:
        """Total steps of `epochs` epochs: the curriculum's epochs, then full ones."""
        head = self.phase_steps[:epochs]
        full = max(0, epochs - len(self.phase_steps)) * max(1, len(self.easy_first) // self.batch_size)
        return sum(head) + full

    def phase(self, step: int) -> tuple[int, int]:
        """(phase, step within the phase); the last phase (all pairs) never ends."""
        for p, length in enumerate(self.phase_steps):
            if step < length:
                return p, step
            step -= length
        return len(self.phase_steps), step

    def __call__(self, step: int) -> np.ndarray:
        p, local = self.phase(step)
        pool = self.easy_first[:self.phase_sizes[p]]
        return pool[global_batch(local, len(pool), self.batch_size, [self.seed, p])]


def easy_first_order(target_similarity: np.ndarray) -> np.ndarray:
    """Indices from the most to the least similar unsafe-caption/target pair (stable on ties)."""
    return np.argsort(-np.asarray(target_similarity, dtype=np.float64), kind="stable")


def redirection_targets(ids: Sequence[str], safe_text: Sequence[str], unsafe_text: Sequence[str],
                        encode: Callable[[Sequence[str]], torch.Tensor]) -> list[dict]:
    """One SAFER_TARGETS row per quadruple: its unsafe caption's nearest safe caption among `safe_text`
    (embedded by `encode`, the frozen base text tower). A caption repeated in the pool is embedded once and
    its first row is the target: batched padding makes embeddings of one caption differ in the last bits, which
    must not pick the row (and so the target image)."""
    first_row: dict[str, int] = {}
    for i, t in enumerate(safe_text):
        first_row.setdefault(t, i)
    pool = list(first_row)
    pool_emb = encode(pool)
    safe = pool_emb[[pool.index(t) for t in safe_text]] if len(pool) < len(safe_text) else pool_emb
    unsafe = encode(list(unsafe_text))
    idx, sim = nearest_safe(unsafe, pool_emb)
    partner = F.cosine_similarity(unsafe.float(), safe.float(), dim=-1).numpy()
    rows = []
    for i, j in enumerate(idx.tolist()):
        target = first_row[pool[j]]
        rows.append({"id": ids[i], "target_id": ids[target], "target_similarity": float(sim[i]),
                     "partner_similarity": float(partner[i]), "target_is_partner": pool[j] == safe_text[i]})
    return rows


def attach_targets(q, rows: Sequence[dict], where: str) -> np.ndarray:
    """Set `q.targets` from SAFER_TARGETS rows and return each quadruple's target similarity.

    Every quadruple needs a target row and every target must be a quadruple of the same set; a stale targets
    file (made from other data) fails here with the file, the row and the id."""
    row_of = {id_: i for i, id_ in enumerate(q.ids)}
    by_id: dict[str, tuple[int, float]] = {}
    for n, r in enumerate(rows):
        if r["id"] not in row_of or r["id"] in by_id:
            what = "is not a quadruple of" if r["id"] not in row_of else "appears twice for"
            raise InputError(f"{where}: row {n}: field 'id' {r['id']!r} {what} {q.where}; re-run the safer_targets "
                             "stage")
        if r["target_id"] not in row_of:
            raise InputError(f"{where}: row {n} ({r['id']}): field 'target_id' {r['target_id']!r} is not a quadruple "
                             f"of {q.where}; re-run the safer_targets stage")
        by_id[r["id"]] = (row_of[r["target_id"]], r["target_similarity"])
    missing = [i for i in q.ids if i not in by_id]
    if missing:
        raise InputError(f"{where}: no target for {len(missing)} quadruple(s) of {q.where}, e.g. id {missing[0]!r} "
                         "(field 'id'); re-run the safer_targets stage")
    q.targets = np.array([by_id[i][0] for i in q.ids], dtype=np.int64)
    return np.array([by_id[i][1] for i in q.ids], dtype=np.float32)
