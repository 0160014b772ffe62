"""Classification metrics, all from confusion matrices: one engine, one table of names.

Each metric maps a stack of matrices ``cm[true][pred]`` ``(..., K, K)`` to one value per matrix,
so a report scores one matrix, validation the ranks' summed matrix, and the bootstrap a thousand
resampled matrices in one call. Definitions are scikit-learn's with ``zero_division=0`` and all
K labels (the tests check each against scikit-learn; the library does not import it, which cost
every rank ~3.5 s). WA is accuracy; UA is the mean recall over the classes present in the truth
(``balanced_accuracy_score``; the paper's "unweighted accuracy" is WA); weighted P/R/F1 weigh by
support, macro ones equally (docs/evaluation.md). :data:`METRICS` is the one table of names
(a report's ``ci``, validation scores, ``compare --metric``, ``train.best_metric``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MetricFn = Callable[[np.ndarray], np.ndarray]  # confusion matrices (..., K, K) → values (...)


# ----------------------------------------------------------------------------- the engine


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0: scikit-learn's ``zero_division=0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, f1, support), each ``(..., K)``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)  # row sums: how many truly are class k
    predicted = cm.sum(axis=-2)  # column sums: how many were called class k
    # 2tp / (support + predicted) is scikit-learn's F1 (not 2PR/(P+R), which rounds twice), and
    # it is 0, not undefined, for a class with neither samples nor predictions.
    f1 = _safe_divide(2.0 * tp, support + predicted)
    return _safe_divide(tp, predicted), _safe_divide(tp, support), f1, support


def _weighted(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    # weights = support, so classes absent from the truth drop out, as in scikit-learn
    return _safe_divide((values * support).sum(axis=-1), support.sum(axis=-1))


def accuracy(cm: np.ndarray) -> np.ndarray:
    """WA: correct / total."""
    cm = np.asarray(cm, dtype=np.float64)
    return _safe_divide(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))


def unweighted_accuracy(cm: np.ndarray) -> np.ndarray:
    """UA: mean recall over the classes that have true samples (``balanced_accuracy_score``)."""
    _, recall, _, support = per_class(cm)
    # A class with no test sample has no recall to average (a bootstrap replicate may lose a
    # rare class); its recall is already 0, so the sum needs no mask, only the count does.
    return _safe_divide(recall.sum(axis=-1), (support > 0).sum(axis=-1))


def macro_precision(cm: np.ndarray) -> np.ndarray:
    return per_class(cm)[0].mean(axis=-1)


def macro_recall(cm: np.ndarray) -> np.ndarray:
    return per_class(cm)[1].mean(axis=-1)


def macro_f1(cm: np.ndarray) -> np.ndarray:
    return per_class(cm)[2].mean(axis=-1)


def weighted_precision(cm: np.ndarray) -> np.ndarray:
    precision, _, _, support = per_class(cm)
    return _weighted(precision, support)


def weighted_recall(cm: np.ndarray) -> np.ndarray:
    """Algebraically equal to accuracy (kept: the paper's tables print it)."""
    _, recall, _, support = per_class(cm)
    return _weighted(recall, support)


def weighted_f1(cm: np.ndarray) -> np.ndarray:
    _, _, f1, support = per_class(cm)
    return _weighted(f1, support)


# ----------------------------------------------------------------------------- the table of names


@dataclass(frozen=True)
class Metric:
    """One reported number: its name (the key everywhere), where a report keeps it, how it is titled."""

    name: str  # "weighted_f1": ci entries, validation scores, compare --metric, train.best_metric
    path: str  # "weighted.f1": its place in one unit's entry of metrics.json (m["weighted"]["f1"])
    title: str  # in sentences, captions and axis labels
    column: str  # a report table's column head
    fn: MetricFn


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("wa", "wa", "WA (accuracy)", "WA (accuracy)", accuracy),
    Metric("ua", "ua", "UA (macro recall)", "UA (macro recall)", unweighted_accuracy),
    Metric("macro_recall", "macro.recall", "macro recall", "Macro R", macro_recall),
    Metric("macro_precision", "macro.precision", "macro precision", "Macro P", macro_precision),
    Metric("macro_f1", "macro.f1", "macro F1", "Macro F1", macro_f1),
    Metric("weighted_precision", "weighted.precision", "weighted precision", "Weighted P", weighted_precision),
    Metric("weighted_recall", "weighted.recall", "weighted recall", "Weighted R", weighted_recall),
    Metric("weighted_f1", "weighted.f1", "weighted F1", "Weighted F1", weighted_f1),
)}
BY_PATH: dict[str, Metric] = {m.path: m for m in METRICS.values()}
VALIDATION = ("wa", "ua", "weighted_f1", "macro_f1")  # scored every epoch: metrics.jsonl, cv.json, best.pt
RENAMED = {"accuracy": "wa"}  # names written by earlier versions (metrics.jsonl, train.best_metric)


def renamed(scores: Mapping[str, Any]) -> dict[str, Any]:
    """``scores`` (e.g. an old metrics.jsonl line's ``val``) with every old name read as today's."""
    return {RENAMED.get(k, k): v for k, v in scores.items()}


# ----------------------------------------------------------------------------- from predictions


def confusion(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` int64 counts, rows = true class, columns = predicted (empty inputs: zeros)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    both = np.concatenate([y_true, y_pred])
    if both.size and (both.min() < 0 or both.max() >= k):
        bad = sorted(set(both[(both < 0) | (both >= k)].tolist()))
        raise ValueError(f"class indices {bad} are outside 0..{k - 1}")
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def unit_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """One unit's entry of metrics.json: n, WA, UA, weighted/macro P/R/F1, per-class P/R/F1/support
    and the confusion matrix (every class gets a row, with 0 where it has no sample)."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.sum() == 0:
        raise ValueError("no samples to score")
    p, r, f, s = per_class(cm)

    def averaged(kind: str) -> dict[str, float]:
        return {part: float(METRICS[f"{kind}_{part}"].fn(cm)) for part in ("precision", "recall", "f1")}

    return {
        "n": int(cm.sum()), "wa": float(accuracy(cm)), "ua": float(unweighted_accuracy(cm)),
        "weighted": averaged("weighted"), "macro": averaged("macro"),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(classes)},
        "confusion": cm.tolist(), "labels": list(classes),
    }


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """:func:`unit_metrics` of class indices ``y_true``/``y_pred`` (into ``classes``)."""
    return unit_metrics(confusion(y_true, y_pred, len(classes)), classes)


def validation_scores(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """An epoch's validation line: n, the :data:`VALIDATION` metrics, per-class recall and the
    confusion matrix, from the ranks' summed counts."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.sum() == 0:
        raise ValueError("no validation samples to score")
    recall = per_class(cm)[1]
    return {"n": int(cm.sum()), **{name: float(METRICS[name].fn(cm)) for name in VALIDATION},
            "recall": {c: float(recall[i]) for i, c in enumerate(classes)}, "confusion": cm.tolist()}


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


def chance_level(metric: str, supports: Sequence[int]) -> float | None:
    """The ``metric`` (a serwild.metrics.METRICS name) of a guess that ignores the
    input and picks each of the K classes with probability 1/K, on a test set with these
    class ``supports``: the metric of its expected confusion matrix (row t = support_t / K in
    every column). 1/K for accuracy and UA; for weighted F1 it depends on the class balance."""
    if metric not in METRICS or not len(supports) or sum(supports) <= 0:
        return None
    s = np.asarray(supports, dtype=np.float64)
    cm = np.repeat(s[:, None] / len(s), len(s), axis=1)
    return float(METRICS[metric].fn(cm))
