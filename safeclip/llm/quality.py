"""World quality of rewrites, judged by the oracle: do they parse, are they unsafe, do they keep the scene."""

from __future__ import annotations

from collections.abc import Sequence

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
