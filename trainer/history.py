"""A run's history: metrics.jsonl (one line per epoch) and the training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serwild.processes import atomic


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """The file rewritten with ``record`` added, atomically: a kill never leaves a cut line."""
    atomic.write_jsonl(path, [*read_jsonl(path), record])


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# A run whose loss still fell this much (relative) over its last epoch had not finished learning:
# validation loss where there is one (and it is then the lowest yet), else training loss, which
# falls faster for longer (it also measures memorising), hence the larger margin.
STILL_FALLING = {"validation": 0.05, "training": 0.10}


def learning_note(records: list[dict[str, Any]]) -> str | None:
    """Why a run looks still learning at its last epoch, or None (it levelled off, or ran one epoch,
    which says nothing): the under-trained flag of every report."""
    if len(records) < 2:
        return None
    before, last = records[-2], records[-1]
    val_losses = [r["val"]["loss"] for r in records if (r.get("val") or {}).get("loss") is not None]
    if len(val_losses) == len(records):
        a, b, which = val_losses[-2], val_losses[-1], "validation"
        if b > min(val_losses):
            return None
    else:
        a, b, which = before.get("train_loss"), last.get("train_loss"), "training"
    if a is None or b is None or a <= 0 or (a - b) / a < STILL_FALLING[which]:
        return None
    return (f"{which} loss still falling at its last epoch ({a:.3f} → {b:.3f} at epoch {last['epoch']}, "
            f"{(b - a) / a:+.0%}): give it more epochs (or train.patience) before reading its numbers")


def plot_curves(records: list[dict[str, Any]], out: str | Path, title: str) -> Path:
    """Training (and validation) loss, training accuracy and validation accuracy / UA / weighted F1
    per epoch → PNG.

    Epochs are whole numbers on the axis (a 2-epoch run would otherwise get ticks at 1.25,
    1.5, …); the legend sits outside the axes; ``title`` names the run, in small type at the
    top (which run, not a caption: that belongs under the figure where it is shown)."""
    # Imported here: only rank 0 plots, once a run, and matplotlib costs every process ~0.5 s to import.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in records], marker="o", label="training loss")
    val = [r for r in records if r.get("val")]
    if any("loss" in r["val"] for r in val):
        ax1.plot([r["epoch"] for r in val], [r["val"].get("loss") for r in val], marker="s", label="validation loss")
        ax1.legend(fontsize=8, frameon=False)
    ax1.set(xlabel="epoch", ylabel="loss (cross-entropy)")
    trained = [r for r in records if r.get("train_accuracy") is not None]
    ax2.plot([r["epoch"] for r in trained], [r["train_accuracy"] for r in trained], marker="o", linestyle="--",
             color="0.5", label="training accuracy")
    for key, label in (("wa", "validation accuracy (WA)"), ("ua", "validation UA"),
                       ("weighted_f1", "validation weighted F1")):
        ax2.plot([r["epoch"] for r in val], [r["val"][key] for r in val], marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="score" if val else "score (no validation part)", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # 1 epoch: one tick
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    if val or trained:
        fig.legend(*ax2.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return atomic.save_figure(fig, out, dpi=100)
