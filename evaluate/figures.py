"""The report figures, drawn to be put in a paper as they are (each is shown in docs/evaluation.md).

No figure has a title: the caption goes under it, in the report that shows it. Figures use
matplotlib's object API (no pyplot, no global backend state) and are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from serwild.processes import atomic

Interval = tuple[float, float] | None  # (low, high) of a 95 % interval, or unknown
DPI = 150
CHANCE_STYLE = {"color": "0.35", "linestyle": (0, (4, 3)), "linewidth": 1.0}
LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}


def _legend_below(fig: Figure, ax: Any, ncols: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(ncols, 4)), fontsize=8,
                   frameon=False)


def _chance_segments(ax: Any, x: np.ndarray, chance: Sequence[float | None], half: float) -> None:
    """One dashed segment per group (chance can differ between conditions), one legend entry."""
    labelled = False
    for xi, c in zip(x, chance):
        if c is None:
            continue
        ax.hlines(c, xi - half, xi + half, label=None if labelled else "chance (uniform random guess)",
                  zorder=2.5, **CHANCE_STYLE)  # over the bars: it is read against them
        labelled = True


def plot_series(path: Path, categories: Sequence[str], series: Mapping[str, Sequence[float | None]],
                ylabel: str, intervals: Mapping[str, Sequence[Interval]] | None = None,
                chance: Sequence[float | None] | None = None) -> Path:
    """Grouped bars: one group per category (test condition), one bar per series; ``intervals``
    (per series, per category) as error bars; ``chance`` (per category) as dashed lines."""
    n = max(1, len(series))
    fig = Figure(figsize=(max(5.0, 1.2 * len(categories) * n ** 0.5 + 1.5), 4.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n
    x = np.arange(len(categories))
    tops = [1.0]
    for i, (name, values) in enumerate(series.items()):
        xs = x + (i - (n - 1) / 2) * width
        ys = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        spans = (intervals or {}).get(name) or [None] * len(ys)
        lo = np.array([0.0 if s is None or np.isnan(y) else max(0.0, y - s[0]) for y, s in zip(ys, spans)])
        hi = np.array([0.0 if s is None or np.isnan(y) else max(0.0, s[1] - y) for y, s in zip(ys, spans)])
        ax.bar(xs, ys, width * 0.92, label=name, zorder=2)
        if any(s is not None for s in spans):
            ax.errorbar(xs, ys, yerr=np.vstack([lo, hi]), fmt="none", ecolor="black", elinewidth=1, capsize=3,
                        zorder=3)
        for xi, y, h in zip(xs, ys, hi):  # the value sits above the interval's cap, never on it
            if not np.isnan(y):
                top = y + h + 0.015
                tops.append(top)
                ax.text(xi, top, f"{y:.2f}", ha="center", va="bottom", fontsize=7,
                        rotation=90 if n > 3 else 0, bbox=LABEL_BOX, zorder=4)
    if chance is not None:
        _chance_segments(ax, x, chance, 0.45)
    ax.set_xticks(x, labels=list(categories))
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_ylim(0.0, max(tops) + (0.12 if n > 3 else 0.07))
    ax.set_ylabel(ylabel)
    ax.set_xlabel("test condition")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    _legend_below(fig, ax, len(series) + (1 if chance is not None else 0))
    return atomic.save_figure(fig, path)


def plot_differences(path: Path, categories: Sequence[str], deltas: Mapping[str, Sequence[Mapping[str, Any] | None]],
                     ylabel: str) -> Path:
    """Each arm's difference to the baseline per category, ``{"delta", "low", "high",
    "excludes_zero"}`` (interval keys optional), as a point with its paired interval."""
    n = max(1, len(deltas))
    fig = Figure(figsize=(max(5.0, 1.1 * len(categories) * n ** 0.5 + 1.5), 3.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(categories))
    ax.axhline(0.0, color="0.3", linewidth=1.0, zorder=1)
    step = min(0.35, 0.8 / n)  # room for each point's value label before the next arm's bar
    reach = [0.05]
    for i, (name, ds) in enumerate(deltas.items()):
        xs = x + (i - (n - 1) / 2) * step
        colour = f"C{i + 1}"  # C0 is the baseline's colour in the bar chart
        for xi, d in zip(xs, ds):
            if d is None:
                continue
            has_ci = "low" in d
            filled = has_ci and bool(d.get("excludes_zero"))
            if has_ci:
                ax.errorbar([xi], [d["delta"]], yerr=[[d["delta"] - d["low"]], [d["high"] - d["delta"]]], fmt="none",
                            ecolor=colour, elinewidth=1.2, capsize=4, zorder=2)
                reach += [abs(d["low"]), abs(d["high"])]
            ax.plot([xi], [d["delta"]], "o", color=colour, markerfacecolor=colour if filled else "white",
                    markersize=6, zorder=3)
            reach.append(abs(d["delta"]))
            # right of the point, clear of the vertical bar and its caps (±4 pt), and just above the
            # point, so a difference near 0 does not sit on the zero line
            ax.annotate(f"{d['delta']:+.3f}", (xi, d["delta"]), xytext=(6, 3), textcoords="offset points",
                        va="bottom", ha="left", fontsize=7, bbox=LABEL_BOX, zorder=4)
        ax.plot([], [], "o", color=colour, label=name)
    lim = max(reach) * 1.15
    ax.set_ylim(-lim, lim)
    ax.set_xticks(x, labels=list(categories))
    ax.set_xlim(-0.6, len(categories) - 0.2)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("test condition")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    _legend_below(fig, ax, n)  # the legend names each difference: the axis label stays short
    return atomic.save_figure(fig, path)


def plot_confusions(path: Path, matrices: Mapping[str, Sequence[Sequence[int]]], classes: Sequence[str]) -> Path:
    """One panel per test condition (``{label: confusion[true][pred]}``): colour = share of
    the true class (row-normalised: recall on the diagonal), text = share and count."""
    k = len(classes)
    n = max(1, len(matrices))
    # Four small panels fit a row; with five or more classes the panels go in a 2-column grid, so
    # each keeps a readable size and the figure an aspect a paper column takes (a 1 × 4 strip of
    # 6 × 6 matrices was 3.7:1, its numbers unreadable at column width).
    cols = n if k < 5 else min(2, n)
    rows = -(-n // cols)
    side = 1.0 + 0.55 * k
    fig = Figure(figsize=(side * cols + 1.0, (side + 0.6) * rows), dpi=DPI, layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    image = None
    for j, (ax, (label, cm)) in enumerate(zip(axes, matrices.items())):
        counts = np.asarray(cm, dtype=np.float64)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        for (r, c), v in np.ndenumerate(counts):
            ax.text(c, r, f"{rates[r, c]:.2f}\n({int(v)})", ha="center", va="center", fontsize=7,
                    color="white" if rates[r, c] > 0.6 else "black")
        ax.set_xticks(range(k), labels=list(classes))
        ax.set_yticks(range(k), labels=list(classes) if j % cols == 0 else [""] * k)
        ax.set_xlabel("predicted class")
        ax.set_title(label, fontsize=9)  # a panel label (which condition), not a caption
        if j % cols == 0:
            ax.set_ylabel("true class")
    if image is not None:
        fig.colorbar(image, ax=axes[:n], shrink=0.8, label="share of the true class (recall on the diagonal)")
    return atomic.save_figure(fig, path)
