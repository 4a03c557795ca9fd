"""The report's figures as PNG bytes: deterministic, so DVC sees the same output for the same metrics.

Each figure is a bare `Figure` on an Agg canvas (no pyplot: no global figure state, no GUI backend, nothing
changed for other code in the process), under matplotlib's default style (a user's matplotlibrc cannot change the
bytes), at a fixed size and dpi, saved without the "Software" version string in the PNG metadata.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from safeclip.io import InputError

FIGSIZE = (6.4, 4.4)
DPI = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CURVE_COLUMNS = ("train_loss", "val_loss")  # what the curve shows, where present


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _figure() -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def tradeoff_png(points: Sequence[tuple[str, float, float]], base_first: bool = True) -> bytes:
    """Redirection (x: T*→V R@1) against kept knowledge (y: zero-shot accuracy), one labelled point per model.
    With `base_first`, `points[0]` is the base model and is drawn distinct (black star), so each method reads as
    a move away from it (False when the base lacks a number and is not among the points)."""
    with matplotlib.style.context("default"):
        fig = _figure()
        ax = fig.add_subplot()
        colours = matplotlib.color_sequences["tab10"]
        for i, (label, x, y) in enumerate(points):
            if i == 0 and base_first:
                ax.scatter([x], [y], marker="*", s=260, color="black", zorder=3, label=label)
            else:
                colour = colours[(i - base_first) % len(colours)]
                ax.scatter([x], [y], marker="o", s=80, color=colour, zorder=3, label=label)
            ax.annotate(label, (x, y), xytext=(7, 6), textcoords="offset points", fontsize=9)
        if not points:
            ax.text(0.5, 0.5, "no model has both numbers", ha="center", va="center", transform=ax.transAxes)
        ax.margins(0.2)
        ax.grid(True, alpha=0.3)
        ax.set_title("Safety vs knowledge: redirection against zero-shot accuracy")
        ax.set_xlabel("T*→V R@1 (%): unsafe text finds its safe image ↑")
        ax.set_ylabel("zero-shot accuracy (%) ↑")
        ax.text(0.99, 0.01, "better: up and right", ha="right", va="bottom", transform=ax.transAxes,
                fontsize=8, color="0.4")
        if points:
            ax.legend(loc="best", fontsize=8)
        return _png(fig)


def read_curve(csv_path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """(steps, values) per CURVE_COLUMNS column present in a training-curve CSV; empty cells are skipped (the
    validation columns are only filled at evaluation steps)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{csv_path}: cannot read ({e})") from e
    if not rows or not rows[0] or rows[0][0] != "step":
        raise InputError(f"{csv_path}: line 1: expected a header whose first column is 'step'")
    header = rows[0]
    curves = {c: ([], []) for c in CURVE_COLUMNS if c in header}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        cells = dict(zip(header, row, strict=False))  # a short row: its missing cells are empty
        try:
            step = float(cells["step"])
            for c, (xs, ys) in curves.items():
                if cells.get(c, "") != "":
                    y = float(cells[c])
                    if math.isfinite(y):
                        xs.append(step)
                        ys.append(y)
        except ValueError as e:
            raise InputError(f"{csv_path}: line {line}: not a number ({e})") from e
    return curves


def curve_png(csv_path: Path, title: str = "training curve") -> bytes:
    """train_loss and, where present, val_loss against step, from a make_safe plots CSV."""
    curves = read_curve(Path(csv_path))
    if not any(xs for xs, _ in curves.values()):
        raise InputError(f"{csv_path}: no values in any of the columns {', '.join(CURVE_COLUMNS)}")
    with matplotlib.style.context("default"):
        fig = _figure()
        ax = fig.add_subplot()
        for c, (xs, ys) in curves.items():
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=c)
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="best", fontsize=8)
        return _png(fig)


def budget_curve_png(curves: dict[str, dict[str, tuple[list[float], list[float]]]], labels: dict[str, str]) -> bytes:
    """% unsafe top-1 against the attack budget k (0: the clean prompt), one colour per model, solid for the free
    attack and dashed for the banned-word attack (whose k = 0 point is the clean prompt too)."""
    with matplotlib.style.context("default"):
        fig = _figure()
        ax = fig.add_subplot()
        colours = matplotlib.color_sequences["tab10"]
        for i, (model, modes) in enumerate(curves.items()):
            colour = "black" if i == 0 else colours[(i - 1) % len(colours)]
            for (mode, (xs, ys)), style in zip(modes.items(), ("-", "--"), strict=False):
                ax.plot(xs, ys, style, marker="o", markersize=4, color=colour, label=f"{labels[model]}, {mode}")
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # budgets are token counts
        ax.grid(True, alpha=0.3)
        ax.set_title("Attack budget: unsafe results against tokens the attacker changes")
        ax.set_xlabel("budget k (tokens replaced; 0: clean prompt)")
        ax.set_ylabel("% unsafe top-1 for unsafe captions ↓")
        ax.legend(loc="best", fontsize=7)
        return _png(fig)
