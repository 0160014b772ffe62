"""Validation metrics from a confusion matrix, metrics.jsonl, and the training-curve plot.

Validation is spread over the ranks (each sample read once) and their confusion matrices
are summed, so the metrics below are over the whole held-out fold. WA is overall accuracy;
UA is the field's unweighted accuracy, the mean of per-class recalls (not the paper's
"unweighted accuracy", see DESIGN.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def confusion(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted."""
    idx = labels.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)


def scores(cm: np.ndarray | torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """accuracy (WA), ua (macro recall), weighted / macro F1 and per-class recall from counts.

    The ranks' confusion matrices are summed before this, so the (true, predicted) pairs are
    rebuilt from the counts and scored by the evaluator's scikit-learn code: one metrics
    implementation for validation and test reports.
    """
    from serwild.evaluate.metrics import classification_metrics

    cm = np.asarray(cm, dtype=np.int64)
    if cm.sum() == 0:
        raise ValueError("no validation samples to score")
    k = len(classes)
    pairs = np.repeat(np.arange(k * k), cm.reshape(-1))
    m = classification_metrics(pairs // k, pairs % k, classes)
    return {
        "n": m["n"],
        "accuracy": m["wa"],
        "ua": m["ua"],
        "weighted_f1": m["weighted"]["f1"],
        "macro_f1": m["macro"]["f1"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "confusion": m["confusion"],
    }


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], out: str | Path, title: str) -> Path:
    """Training loss and validation accuracy / UA / weighted F1 per epoch → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
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
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
