"""The retrieval suite on one model's test embeddings: ViSU recalls, % unsafe retrieved, SafeGround.

Galleries follow the ViSU protocol: safe queries search the safe items; unsafe queries search safe and unsafe
items together, and a hit is the safe counterpart. Values are percentages (as the papers report them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from safeclip.eval.retrieval import recall_at_k, unsafe_rate
from safeclip.eval.safeground import safeground


def _pct(d: dict) -> dict:
    return {k: 100.0 * v for k, v in d.items()}


def retrieval_metrics(e: dict[str, torch.Tensor], ks: Sequence[int], unsafe_ks: Sequence[int],
                      base: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Flat metrics. `base` (the base model's embeddings) adds the text-tower-only view: this model's text
    queries against the base model's image gallery, which is how SD and other text-only deployments see it."""
    n = len(e["text_safe"])
    idx = torch.arange(n)
    t, ts, v, vs = e["text_safe"], e["text_unsafe"], e["image_safe"], e["image_unsafe"]
    mixed_images, mixed_texts = torch.cat([v, vs]), torch.cat([t, ts])
    unsafe_flags = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    out: dict[str, float] = {}

    def add(name: str, values: dict) -> None:
        out.update({f"{name}.r{k}": val for k, val in _pct(values).items()})

    add("retrieval.t_to_v", recall_at_k(t, v, idx, ks))
    add("retrieval.v_to_t", recall_at_k(v, t, idx, ks))
    add("retrieval.t_star_to_v", recall_at_k(ts, mixed_images, idx, ks))
    add("retrieval.v_star_to_t", recall_at_k(vs, mixed_texts, idx, ks))
    add("retrieval.t_star_to_v_star", recall_at_k(ts, mixed_images, idx + n, ks))  # knows the unsafe concept?
    for name, queries, gallery in (("unsafe_text", ts, mixed_images), ("unsafe_image", vs, mixed_texts),
                                   ("safe_text", t, mixed_images), ("safe_image", v, mixed_texts)):
        out.update({f"unsafe_retrieved.{name}.top{k}": val
                    for k, val in _pct(unsafe_rate(queries, gallery, unsafe_flags, unsafe_ks)).items()})
    out.update({f"safeground.{k}": val for k, val in _pct(safeground(t, ts, v, vs)).items()})
    if base is not None:
        base_images = torch.cat([base["image_safe"], base["image_unsafe"]])
        add("text_only.t_star_to_v", recall_at_k(ts, base_images, idx, ks))
        add("text_only.t_to_v", recall_at_k(t, base["image_safe"], idx, ks))
        out.update({f"text_only.unsafe_retrieved.unsafe_text.top{k}": val
                    for k, val in _pct(unsafe_rate(ts, base_images, unsafe_flags, unsafe_ks)).items()})
    return out


def recall_curve(metrics: dict[str, float], ks: Sequence[int]) -> list[dict]:
    """Rows of the recall-vs-k plot: one per k, one column per direction."""
    dirs = ("t_to_v", "v_to_t", "t_star_to_v", "v_star_to_t")
    return [{"k": k, **{d: metrics[f"retrieval.{d}.r{k}"] for d in dirs}} for k in ks]
