"""A run's history: metrics.jsonl (one line per epoch) and the training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from serwild import atomic


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """The file rewritten with ``record`` added, atomically: a kill never leaves a cut line."""
    atomic.write_jsonl(path, [*read_jsonl(path), record])


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], out: str | Path, title: str) -> Path:
    """Training loss and validation accuracy / UA / weighted F1 per epoch → PNG."""
    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 4), constrained_layout=True)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in records], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax1.grid(alpha=0.3)
    val = [r for r in records if r.get("val")]
    for key, label in (("accuracy", "accuracy (WA)"), ("ua", "UA"), ("weighted_f1", "weighted F1")):
        ax2.plot([r["epoch"] for r in val], [r["val"][key] for r in val], marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="validation", title="validation" if val else "no validation fold",
            ylim=(0, 1))
    ax2.grid(alpha=0.3)
    if val:
        ax2.legend()
    fig.suptitle(title)
    return atomic.save_figure(fig, out, dpi=100)
