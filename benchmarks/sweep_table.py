"""The per-repo cells the sweep benchmarks print: one value per run (e.g. seeds 0-2) and their mean, the figure a
world default is chosen on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def cells(runs: Sequence[Mapping[str, float]], keys: Sequence[str], signed: bool = False) -> list[str]:
    """'v0/v1/v2 (mean)' per key, over the runs' values."""
    fmt = "+.1f" if signed else ".1f"
    out = []
    for k in keys:
        per = [run[k] for run in runs]
        out.append(f"{'/'.join(format(x, fmt) for x in per)} ({format(sum(per) / len(per), fmt)})")
    return out
