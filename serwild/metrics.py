"""Classification metrics for one test condition, per 1 s block and per utterance.

All arithmetic is scikit-learn's; this module only fixes the label set (so a class the
model never predicts still gets a row, with 0 instead of a warning), names the numbers
the way the field does, and turns block logits into utterance decisions.

- **WA** (weighted accuracy) is plain accuracy: correct / total. It equals weighted recall.
- **UA** (unweighted accuracy) is the mean of the per-class recalls (macro recall), the
  number SER papers compare on imbalanced sets. (The paper's "unweighted accuracy" is WA.)
- **weighted** P/R/F1 average the per-class scores weighted by support (the paper's
  "weighted average" columns); **macro** P/R/F1 average them with equal weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """WA, UA, weighted/macro P/R/F1, per-class P/R/F1/support and the confusion matrix.

    ``y_true``/``y_pred`` are class indices into ``classes``. The confusion matrix is
    ``confusion[true][pred]`` (rows = true class), as scikit-learn returns it.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if y_true.size == 0:
        raise ValueError("no samples to score")
    labels = list(range(len(classes)))
    out_of_range = set(np.unique(np.concatenate([y_true, y_pred])).tolist()) - set(labels)
    if out_of_range:
        raise ValueError(f"class indices {sorted(out_of_range)} are outside 0..{len(classes) - 1}")

    def averaged(average: str) -> dict[str, float]:
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                     zero_division=0)
        return {"precision": float(p), "recall": float(r), "f1": float(f)}

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                 zero_division=0)
    macro = averaged("macro")
    return {
        "n": int(y_true.size),
        "wa": float(accuracy_score(y_true, y_pred)),
        # UA over the classes present in the test set: a class with no test sample has no
        # recall to average (scikit-learn's macro recall would count it as 0).
        "ua": float(np.mean([r[i] for i in labels if s[i] > 0])),
        "weighted": averaged("weighted"),
        "macro": macro,
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                   "support": int(s[i])}
            for i, name in enumerate(classes)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(classes),
    }


def utterance_logits(logits: np.ndarray, labels: np.ndarray,
                     utterances: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mean of each utterance's block logits → (utterance logits, labels, utterance ids).

    Utterances come out sorted by id, so the result does not depend on the order in which
    the blocks were read (or which rank read them). Raises ValueError if one utterance's
    blocks disagree on the label (a corrupt build).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not (len(logits) == len(labels) == len(utterances)):
        raise ValueError("logits, labels and utterances differ in length")
    ids, inverse = np.unique(np.asarray(utterances, dtype=object).astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    sums = np.zeros((len(ids), logits.shape[1]))
    np.add.at(sums, inverse, logits)
    utt_labels = np.full(len(ids), -1, dtype=np.int64)
    utt_labels[inverse] = labels
    mismatch = utt_labels[inverse] != labels
    if mismatch.any():
        bad = ids[inverse[np.argmax(mismatch)]]
        raise ValueError(f"utterance {bad} has blocks with different labels")
    return sums / counts[:, None], utt_labels, [str(u) for u in ids]


def condition_metrics(logits: np.ndarray, labels: np.ndarray, utterances: Sequence[str],
                      classes: Sequence[str]) -> dict[str, Any]:
    """``{"block": metrics, "utterance": metrics}`` for one test condition's outputs."""
    logits = np.asarray(logits)
    block = classification_metrics(labels, logits.argmax(axis=1), classes)
    u_logits, u_labels, _ = utterance_logits(logits, labels, utterances)
    utterance = classification_metrics(u_labels, u_logits.argmax(axis=1), classes)
    return {"block": block, "utterance": utterance}


# ----------------------------------------------------------------------------- from summed counts


def scores_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """accuracy (WA), ua (macro recall), weighted / macro F1 and per-class recall from counts.

    The trainer sums the ranks' confusion matrices, so the (true, predicted) pairs are
    rebuilt from the counts and scored by :func:`classification_metrics`: one metrics
    implementation for validation and test reports.
    """
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
