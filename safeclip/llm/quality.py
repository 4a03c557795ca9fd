"""World quality of rewrites, judged by the oracle: do they parse, are they unsafe, do they keep the scene."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from safeclip.llm.generate import rewrite
from safeclip.world.oracle import judge_rewrite


def rewrite_quality(safe: Sequence[str], generated: Sequence[str]) -> dict[str, float]:
    verdicts = [judge_rewrite(s, g) for s, g in zip(safe, generated, strict=True)]
    n = max(1, len(verdicts))
    return {
        "parse": sum(v.parses for v in verdicts) / n,
        "unsafe": sum(v.unsafe for v in verdicts) / n,
        "scene_kept": sum(v.scene_kept for v in verdicts) / n,
        "good": sum(v.good for v in verdicts) / n,
        "exact_twin": sum(v.exact_twin for v in verdicts) / n,
        "copied_input": sum(s.split() == g.split() for s, g in zip(safe, generated, strict=True)) / n,
        "n": len(verdicts),
    }


def judged_rewrites(model, tok, sets: Mapping[str, tuple[Sequence[str], dict[str, Any]]], *, prefix: str,
                    batch_size: int, max_new_tokens: int, seed: int, log: logging.Logger) -> dict[str, float]:
    """Rewrite each named set of safe captions (`rewrite`'s keyword arguments beside it: {} is greedy) and judge
    the first rewrite of each with the oracle: `<prefix>.<name>.<figure>` metrics (SFT's and DPO's world figures),
    one log line a set."""
    out = {}
    for name, (safe, kwargs) in sets.items():
        gen = [g[0] for g in rewrite(model, tok, list(safe), batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     seed=seed, **kwargs)]
        q = rewrite_quality(safe, gen)
        out.update({f"{prefix}.{name}.{k}": v for k, v in q.items()})
        log.info("%s (n=%d): parse %.1f%%, unsafe %.1f%%, scene kept %.1f%%; e.g. %r -> %r", name, q["n"],
                 100 * q["parse"], 100 * q["unsafe"], 100 * q["scene_kept"], safe[0], gen[0])
    return out
