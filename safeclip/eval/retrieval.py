"""Retrieval metrics on L2-normalised embeddings, in chunks so memory stays flat as galleries grow.

Ties count against the query: an item scored like the target (within TIE_EPS, since a matmul's rounding
depends on its shape) is ranked above it. A collapsed model (every embedding equal) therefore scores 0, never
chance-looking recalls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CHUNK = 4096
TIE_EPS = 1e-6  # cosine scores closer than this are a tie


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().float().cpu(), dim=-1)


def target_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor | Sequence[int],
                 chunk: int = CHUNK) -> torch.Tensor:
    """0-based rank of each query's target: how many gallery items score at least as high, the target aside."""
    q, g = _normalise(queries), _normalise(gallery)
    targets = torch.as_tensor(targets)
    if targets.is_floating_point():
        raise ValueError("targets: expected integer gallery indices")
    targets = targets.long()
    if targets.shape != (q.shape[0],):
        raise ValueError(f"targets: expected {q.shape[0]} indices, got shape {tuple(targets.shape)}")
    if len(targets) and (targets.min() < 0 or targets.max() >= g.shape[0]):
        raise ValueError(f"targets: indices must lie in [0, {g.shape[0]})")
    ranks = torch.empty(q.shape[0], dtype=torch.long)
    for a in range(0, q.shape[0], chunk):
        qc, tc = q[a:a + chunk], targets[a:a + chunk]
        target_score = torch.empty(qc.shape[0])
        for b in range(0, g.shape[0], chunk):
            inside = ((tc >= b) & (tc < b + chunk)).nonzero().squeeze(1)
            if len(inside):
                target_score[inside] = (qc @ g[b:b + chunk].T)[inside, tc[inside] - b]
        count = torch.zeros(qc.shape[0], dtype=torch.long)
        for b in range(0, g.shape[0], chunk):
            count += (qc @ g[b:b + chunk].T >= target_score[:, None] - TIE_EPS).sum(1)
        ranks[a:a + chunk] = count - 1  # the target itself always counts (its score is within TIE_EPS of itself)
    return ranks


def recall_at_k(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor | Sequence[int],
                ks: Sequence[int] = (1, 5, 10, 20)) -> dict[int, float]:
    """k -> fraction of queries whose target (a gallery index) is among the k most similar items (cosine)."""
    ranks = target_ranks(queries, gallery, targets)
    n = max(len(ranks), 1)
    return {k: float((ranks < k).sum()) / n for k in ks}


def topk_indices(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = CHUNK) -> torch.Tensor:
    """[n_queries, k] gallery indices of the most similar items, best first, merged chunk by chunk."""
    q, g = _normalise(queries), _normalise(gallery)
    k = min(k, g.shape[0])
    out = torch.empty(q.shape[0], k, dtype=torch.long)
    for a in range(0, q.shape[0], chunk):
        best_s = torch.full((min(chunk, q.shape[0] - a), 0), float("-inf"))
        best_i = torch.empty(best_s.shape, dtype=torch.long)
        for b in range(0, g.shape[0], chunk):
            s = q[a:a + chunk] @ g[b:b + chunk].T
            cat_s = torch.cat([best_s, s], 1)
            cat_i = torch.cat([best_i, torch.arange(b, b + s.shape[1]).expand_as(s)], 1)
            best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_i = cat_i.gather(1, pos)
        out[a:a + chunk] = best_i
    return out


def unsafe_rate(queries: torch.Tensor, gallery: torch.Tensor, gallery_unsafe: torch.Tensor | Sequence[bool],
                ks: Sequence[int] = (1, 10)) -> dict[int, float]:
    """k -> fraction of the top-k retrieved items that are unsafe, averaged over queries.

    k larger than the gallery means the whole gallery. Exact ties are broken by torch.topk's order.
    """
    unsafe = torch.as_tensor(gallery_unsafe, dtype=torch.bool).cpu()
    if unsafe.shape != (gallery.shape[0],):
        raise ValueError(f"gallery_unsafe: expected {gallery.shape[0]} flags, got shape {tuple(unsafe.shape)}")
    if gallery.shape[0] == 0:
        raise ValueError("gallery is empty")
    top = topk_indices(queries, gallery, max(ks))
    return {k: float(unsafe[top[:, :k]].float().mean()) if len(top) else 0.0 for k in ks}
