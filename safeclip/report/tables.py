"""Metrics files in, comparison tables and claim verdicts out: plain data, so tests can check every number.

The report only reads what the eval stages wrote (flat JSON, percentages, a value may be null). A value that is
missing or null is shown as "–" and never guessed; a missing *file* is an InputError that names the stage that
makes it, because that is what the user has to run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safeclip.io import InputError
from safeclip.methods.registry import BASE, display_name

MISSING = "–"

# "UWM keeps PS close to the base": the paper reports 67.8 vs 67.5 (0.3 points). 5 points is a loose band that
# still separates "kept" from the drops Safe-CLIP-style fine-tuning shows on PS (tens of points on the world data).
PS_CLOSE_POINTS = 5.0

YES, NO, NOT_EVALUATED = "yes", "no", "not evaluated"

ZEROSHOT_PREFIX = "zeroshot."
ZEROSHOT_MEAN_KEYS = ("zeroshot.datasets_mean", "zeroshot.mean")  # headline order: the paper's sets, then world

Metrics = dict[str, float | None]


# ---------------------------------------------------------------------------------------------------- loading


def stage_name(kind: str, model: str) -> str:
    """The DVC stage that writes `kind`'s metrics for `model` (the base has its own, non-matrix stage)."""
    return f"{kind}_base" if model == BASE else f"{kind}@{model}"


def read_metrics_json(path: Path, stage: str | None = None) -> Metrics:
    """A flat metrics JSON: an object of numbers or nulls. `stage` (when the file is required) goes into the
    error so the message says what to run, not just what is missing."""
    if not path.exists():
        hint = f"; the stage {stage} makes it (dvc repro {stage})" if stage else ""
        raise InputError(f"{path}: file does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of metric names to numbers, got {type(data).__name__}")
    out: Metrics = {}
    for k, v in data.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InputError(f"{path}: {k!r} is {v!r}, expected a number or null")
        out[k] = None if v is None or not math.isfinite(v) else float(v)
    return out


def load_model_metrics(models: Sequence[str], root: Path = Path(".")) -> dict[str, Metrics]:
    """Retrieval + zero-shot metrics per model, merged (their keys do not overlap: `zeroshot.*` vs the rest).
    Both files are required: a report without one of them would silently compare different things."""
    out = {}
    for m in models:
        merged: Metrics = {}
        for folder in ("retrieval", "zeroshot"):
            merged.update(read_metrics_json(root / "metrics" / folder / f"{m}.json", stage_name("evaluate", m)))
        out[m] = merged
    return out


def load_make_safe(methods: Sequence[str], root: Path = Path(".")) -> dict[str, Metrics]:
    """make_safe metrics per method where the file exists (optional: the report works from eval metrics alone)."""
    return {m: read_metrics_json(p) for m in methods if (p := root / "metrics" / "make_safe" / f"{m}.json").exists()}


# ---------------------------------------------------------------------------------------------------- values


def zeroshot_accuracy(m: Mapping[str, float | None]) -> float | None:
    """The headline zero-shot number: the paper sets' mean, else the world mean, else the mean of whatever
    zero-shot values there are (a profile that writes no mean key), else missing."""
    for key in ZEROSHOT_MEAN_KEYS:
        if m.get(key) is not None:
            return m[key]
    values = [v for k, v in m.items() if k.startswith(ZEROSHOT_PREFIX) and v is not None]
    return sum(values) / len(values) if values else None


def zeroshot_keys(metrics: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """The per-set zero-shot keys over all models (means excluded), sorted so column order is stable."""
    return sorted({k for m in metrics.values() for k in m
                   if k.startswith(ZEROSHOT_PREFIX) and k not in ZEROSHOT_MEAN_KEYS})


def fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def fmt_delta(value: float | None, base: float | None) -> str:
    """`25.7 (+21.8)`: the value and its change from the base, both to 1 decimal; "±0.0" rather than "-0.0"."""
    if value is None or base is None:
        return fmt(value)
    d = f"{value - base:+.1f}"
    return f"{fmt(value)} ({'±0.0' if d in ('+0.0', '-0.0') else d})"


# ---------------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """One table column: how to read its value from a model's metrics, and which direction is better."""

    label: str
    get: Callable[[Mapping[str, float | None]], float | None]
    better: str = "↑"  # "↑", "↓" or "" (no direction: shown as is)
    # the value for the base model's row where it differs from `get` (None: use `get`)
    base_get: Callable[[Mapping[str, float | None]], float | None] | None = None

    @property
    def header(self) -> str:
        return f"{self.label} {self.better}".strip()


def key(name: str) -> Callable[[Mapping[str, float | None]], float | None]:
    return lambda m: m.get(name)


@dataclass(frozen=True)
class Table:
    """Rendered cells; `groups` ((title, number of columns) over the header after the model column) lets the
    HTML draw a two-row header and the markdown name the groups. `numeric`: right-align every cell after the
    first (numbers line up); False for tables of sentences."""

    header: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] = field(default_factory=list)
    numeric: bool = True


SAFETY = [
    Column("T*→V R@1", key("retrieval.t_star_to_v.r1")),
    Column("V*→T R@1", key("retrieval.v_star_to_t.r1")),
    Column("% unsafe top-1, unsafe text queries", key("unsafe_retrieved.unsafe_text.top1"), "↓"),
    Column("% unsafe top-1, unsafe image queries", key("unsafe_retrieved.unsafe_image.top1"), "↓"),
    Column("SafeGround PS", key("safeground.PS")),
    Column("SafeGround PU", key("safeground.PU")),
    Column("SafeGround GS", key("safeground.GS")),
]
KNOWLEDGE = [
    Column("T→V R@1", key("retrieval.t_to_v.r1")),
    Column("V→T R@1", key("retrieval.v_to_t.r1")),
    Column("zero-shot accuracy", zeroshot_accuracy),
]


def comparison_table(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str],
           groups: Sequence[tuple[str, Sequence[Column]]]) -> Table:
    """Base row first (plain values), then one row per method with its change from the base."""
    cols = [c for _, cs in groups for c in cs]
    base = metrics[BASE]
    base_values = [(c.base_get or c.get)(base) for c in cols]
    rows = [[display_name(BASE)] + [fmt(c.get(base)) for c in cols]]
    for m in methods:
        values = [c.get(metrics[m]) for c in cols]
        rows.append([display_name(m)] + [fmt_delta(v, b) for v, b in zip(values, base_values, strict=True)])
    return Table(["model"] + [c.header for c in cols], rows, [(title, len(cs)) for title, cs in groups])


def main_table(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> Table:
    """Safety (redirection, % unsafe retrieved, SafeGround) beside knowledge (safe retrieval, zero-shot)."""
    return comparison_table(metrics, methods, [("Safety", SAFETY), ("Knowledge", KNOWLEDGE)])


def main_rows(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> list[list[str]]:
    return main_table(metrics, methods).rows


def text_tower_table(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> Table:
    """The text tower alone against the base image tower: what a text-to-image model (SD) actually uses.

    The base has no `text_only.*` keys (its text tower *is* the base's), so its row shows "–" there and the
    methods' changes are taken from the base's full-model numbers, which measure the same thing."""
    text_only = [
        Column("text tower T*→V R@1", key("text_only.t_star_to_v.r1"),
               base_get=lambda m: _first(m, "text_only.t_star_to_v.r1", "retrieval.t_star_to_v.r1")),
        Column("text tower % unsafe top-1, unsafe text queries", key("text_only.unsafe_retrieved.unsafe_text.top1"),
               "↓", base_get=lambda m: _first(m, "text_only.unsafe_retrieved.unsafe_text.top1",
                                               "unsafe_retrieved.unsafe_text.top1")),
    ]
    per_set = [Column(f"zero-shot {k.removeprefix(ZEROSHOT_PREFIX)}", key(k)) for k in zeroshot_keys(metrics)]
    groups = [("Text tower only", text_only)] + ([("Zero-shot per set", per_set)] if per_set else [])
    return comparison_table(metrics, methods, groups)


def _first(m: Mapping[str, float | None], *keys: str) -> float | None:
    return next((m[k] for k in keys if m.get(k) is not None), None)


HOW_MADE = [("steps", "optimiser steps"), ("train_quadruples", "training quadruples"),
            ("stopped_early", "stopped early (1 = yes)"), ("targets_own_partner", "% redirected to own partner"),
            ("calibration_pairs", "calibration pairs"), ("mask.text.negated", "text weights negated"),
            ("mask.vision.negated", "vision weights negated")]


def how_made_table(make_safe: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> Table | None:
    """Steps (and the other run facts make_safe records) per method; None when no method has any of them."""
    present = [(k, label) for k, label in HOW_MADE
               if any(make_safe.get(m, {}).get(f"make_safe.{m}.{k}") is not None for m in methods)]
    if not present:
        return None
    rows = []
    for m in methods:
        values = [make_safe.get(m, {}).get(f"make_safe.{m}.{k}") for k, _ in present]
        rows.append([display_name(m)] + [MISSING if v is None else f"{v:g}" if float(v).is_integer() else f"{v:.1f}"
                                         for v in values])
    return Table(["method"] + [label for _, label in present], rows)


# ---------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """A claim from the papers checked on this run's numbers. `verdict` is "yes", "no" or "not evaluated"."""

    text: str
    verdict: str
    detail: str


def _compare_claim(text: str, paper: str, metrics: Mapping[str, Mapping[str, float | None]],
                   methods: Sequence[str], a: str, b: str, what: str,
                   get: Callable[[Mapping[str, float | None]], float | None]) -> Claim:
    """`a` beats `b` on `get` (strictly higher)."""
    missing = [display_name(m) for m in (a, b) if m not in methods]
    if missing:
        return Claim(text, NOT_EVALUATED, f"{' and '.join(missing)} not in this run's methods ({paper}).")
    va, vb = get(metrics[a]), get(metrics[b])
    if va is None or vb is None:
        return Claim(text, NOT_EVALUATED, f"{what} is missing for {display_name(a if va is None else b)} ({paper}).")
    return Claim(text, YES if va > vb else NO,
                 f"{what}: {display_name(a)} {fmt(va)} vs {display_name(b)} {fmt(vb)} ({paper}).")


def claims(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> list[Claim]:
    """The papers' headline claims, each with this run's figures and a verdict."""
    t_star = key("retrieval.t_star_to_v.r1")
    out = [
        _compare_claim("SafeR-CLIP keeps more zero-shot accuracy than Safe-CLIP",
                       "papers: 60.2 vs 52.2 on 11 sets, ViT-L/14", metrics, methods, "safer_clip", "safe_clip",
                       "zero-shot accuracy", zeroshot_accuracy),
        _compare_claim("SafeR-CLIP redirects unsafe text better than Safe-CLIP (T*→V R@1)",
                       "papers: 27.9 vs 14.5", metrics, methods, "safer_clip", "safe_clip", "T*→V R@1", t_star),
        _ps_close_claim(metrics, methods),
    ]
    pu, base = key("safeground.PU"), metrics[BASE]
    if not methods:
        out.append(Claim("Every method improves T*→V R@1 and PU over the base", NOT_EVALUATED,
                         "No make-safe method in this run."))
    for m in methods:
        text = f"{display_name(m)} improves T*→V R@1 and PU over the base"
        pairs = [("T*→V R@1", t_star(metrics[m]), t_star(base)), ("PU", pu(metrics[m]), pu(base))]
        figures = "; ".join(f"{name} {fmt(v)} vs {fmt(b)}" for name, v, b in pairs)
        if any(v is None or b is None for _, v, b in pairs):
            out.append(Claim(text, NOT_EVALUATED, f"{figures} (a value is missing)."))
        else:
            out.append(Claim(text, YES if all(v > b for _, v, b in pairs) else NO, f"{figures} (base second)."))
    return out


def _ps_close_claim(metrics: Mapping[str, Mapping[str, float | None]], methods: Sequence[str]) -> Claim:
    text, paper = "UWM keeps PS close to the base", "paper: 67.8 vs 67.5"
    if "uwm" not in methods:
        return Claim(text, NOT_EVALUATED, f"UWM not in this run's methods ({paper}).")
    ps, base = metrics["uwm"].get("safeground.PS"), metrics[BASE].get("safeground.PS")
    if ps is None or base is None:
        return Claim(text, NOT_EVALUATED, f"SafeGround PS is missing ({paper}).")
    gap = abs(ps - base)
    return Claim(text, YES if gap <= PS_CLOSE_POINTS else NO,
                 f"PS: UWM {fmt(ps)} vs base {fmt(base)}, {gap:.1f} points apart (close: ≤ {PS_CLOSE_POINTS:g}; "
                 f"{paper}).")
