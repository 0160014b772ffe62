"""Honest uncertainty for classification metrics: cluster bootstrap CIs and paired differences.

Why a *cluster* bootstrap: the test set is cut into 1 s blocks, and the blocks of one
utterance share a speaker, a sentence and a recording, so their errors are strongly
correlated. Resampling blocks as if they were independent pretends we have ~5x more
evidence than we do and gives intervals that are far too narrow. The independent unit is
the utterance (``groups``), so each bootstrap replicate draws whole utterances with
replacement and keeps all of their blocks.

Why confusion matrices: every metric we report (WA, UA, weighted/macro P/R/F1) is a
function of the confusion matrix alone, and a resampled confusion matrix is just a
weighted sum of per-utterance confusion matrices (weight = how often the utterance was
drawn). So we precompute a ``(groups, K, K)`` count tensor once and each replicate is one
row of a matrix product: 1000 replicates over 400 utterances cost a few milliseconds,
instead of 1000 calls into scikit-learn.

Metric functions here take a stack of confusion matrices ``(..., K, K)`` (rows = true
class, as scikit-learn) and return one value per matrix ``(...)``, with scikit-learn's
definitions and ``zero_division=0``: a class nobody predicts has precision 0, classes
absent from the truth get weight 0 in weighted averages, and macro averages run over all
``K`` classes. ``"ua"`` follows ``serwild.evaluate.metrics`` (and scikit-learn's
``balanced_accuracy_score``): mean recall over the classes present in the truth, which is
what the reports print; ``"macro_recall"`` is scikit-learn's ``recall_score(average="macro",
labels=range(K))``. The two agree whenever every class has test samples.

Intervals are plain percentile intervals. Seeds go through ``np.random.default_rng`` so the
same seed gives the same interval, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# A metric maps confusion matrices (..., K, K) -> values (...).
MetricFn = Callable[[np.ndarray], np.ndarray]
ArrayLike = Sequence[Any] | np.ndarray


# ---------------------------------------------------------------------------------------------
# metrics from confusion matrices (vectorised over leading axes)
# ---------------------------------------------------------------------------------------------

def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0: scikit-learn's ``zero_division=0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, f1, support), each ``(..., K)``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)  # row sums: how many truly are class k
    predicted = cm.sum(axis=-2)  # column sums: how many were called class k
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    # 2tp / (2tp + fp + fn) is how scikit-learn computes F1 (no 2PR/(P+R) rounding), and it
    # is 0 -- not undefined -- for a class with neither samples nor predictions.
    f1 = _safe_divide(2.0 * tp, support + predicted)
    return precision, recall, f1, support


def _weighted(values: np.ndarray, support: np.ndarray) -> np.ndarray:
    # weights = support, so classes absent from the truth drop out, as in scikit-learn
    return _safe_divide((values * support).sum(axis=-1), support.sum(axis=-1))


def accuracy(cm: np.ndarray) -> np.ndarray:
    """WA: correct / total."""
    cm = np.asarray(cm, dtype=np.float64)
    return _safe_divide(np.trace(cm, axis1=-2, axis2=-1), cm.sum(axis=(-2, -1)))


def unweighted_accuracy(cm: np.ndarray) -> np.ndarray:
    """UA: mean recall over the classes that have true samples (``balanced_accuracy_score``)."""
    _, recall, _, support = _per_class(cm)
    present = support > 0
    # a bootstrap replicate may lose a rare class entirely; it then has no recall to average
    return _safe_divide((recall * present).sum(axis=-1), present.sum(axis=-1))


def macro_recall(cm: np.ndarray) -> np.ndarray:
    """``recall_score(average="macro", labels=range(K), zero_division=0)``."""
    return _per_class(cm)[1].mean(axis=-1)


def macro_f1(cm: np.ndarray) -> np.ndarray:
    """``f1_score(average="macro", labels=range(K), zero_division=0)``."""
    return _per_class(cm)[2].mean(axis=-1)


def macro_precision(cm: np.ndarray) -> np.ndarray:
    """``precision_score(average="macro", labels=range(K), zero_division=0)``."""
    return _per_class(cm)[0].mean(axis=-1)


def weighted_f1(cm: np.ndarray) -> np.ndarray:
    """``f1_score(average="weighted", zero_division=0)``."""
    _, _, f1, support = _per_class(cm)
    return _weighted(f1, support)


def weighted_precision(cm: np.ndarray) -> np.ndarray:
    """``precision_score(average="weighted", zero_division=0)``."""
    precision, _, _, support = _per_class(cm)
    return _weighted(precision, support)


def weighted_recall(cm: np.ndarray) -> np.ndarray:
    """``recall_score(average="weighted")`` -- algebraically equal to accuracy."""
    _, recall, _, support = _per_class(cm)
    return _weighted(recall, support)


METRICS: dict[str, MetricFn] = {
    "wa": accuracy,
    "ua": unweighted_accuracy,
    "macro_recall": macro_recall,
    "macro_precision": macro_precision,
    "macro_f1": macro_f1,
    "weighted_precision": weighted_precision,
    "weighted_recall": weighted_recall,
    "weighted_f1": weighted_f1,
}


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------

def _labels(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative class indices")
    return arr.astype(np.int64, copy=False)


def _check_settings(n_resamples: int, alpha: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _prepare(y_true: ArrayLike, preds: Sequence[ArrayLike], groups: ArrayLike,
             n_classes: int | None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, int]:
    """Validated (y_true, predictions, group codes 0..G-1, K)."""
    truth = _labels(y_true, "y_true")
    predictions = [_labels(p, f"predictions[{i}]") for i, p in enumerate(preds)]
    group_arr = np.asarray(groups)
    if truth.size == 0:
        raise ValueError("empty input: nothing to resample")
    if any(p.shape != truth.shape for p in predictions) or group_arr.shape != truth.shape:
        raise ValueError(f"lengths differ: y_true {truth.shape}, predictions {[p.shape for p in predictions]}, "
                         f"groups {group_arr.shape}")
    seen = int(max([truth.max()] + [p.max() for p in predictions])) + 1
    k = seen if n_classes is None else int(n_classes)
    if k < seen:
        raise ValueError(f"n_classes={n_classes} but class index {seen - 1} occurs")
    # group ids may be strings (utterance ids) or ints; only their identity matters
    _, codes = np.unique(group_arr, return_inverse=True)
    return truth, predictions, codes.reshape(-1), k


def group_confusions(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int,
                     n_classes: int) -> np.ndarray:
    """``(n_groups, K, K)`` int64: each group's own confusion matrix (rows = true class)."""
    flat = (codes * n_classes + y_true) * n_classes + y_pred
    counts = np.bincount(flat, minlength=n_groups * n_classes * n_classes)
    return counts.reshape(n_groups, n_classes, n_classes)


def resample_counts(rng: np.random.Generator, n_groups: int, n_resamples: int) -> np.ndarray:
    """``(n_resamples, n_groups)``: how often each group is drawn in each replicate.

    Each replicate draws ``n_groups`` groups uniformly with replacement (the classic
    bootstrap of the independent units); counting draws with one bincount avoids
    materialising the resampled data.
    """
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    offsets = np.arange(n_resamples, dtype=np.int64)[:, None] * n_groups
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)


def resampled_confusions(per_group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(n_resamples, K, K)``: each replicate's confusion matrix = Σ_g counts[g] · per_group[g]."""
    g, k, _ = per_group.shape
    # int64 matmul stays exact (float64 would be too, up to 2**53 blocks)
    return (counts @ per_group.reshape(g, k * k)).reshape(-1, k, k)


def _apply(fn: MetricFn, name: str, cms: np.ndarray) -> np.ndarray:
    out = np.asarray(fn(cms), dtype=np.float64)
    if out.shape != cms.shape[:-2]:
        raise ValueError(f"metric {name!r} must map (..., K, K) to (...); got {out.shape} for {cms.shape}")
    return out


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def bootstrap_ci(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike,
                 metric_fns: Mapping[str, MetricFn] | None = None, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05, n_classes: int | None = None) -> dict[str, dict[str, float | int]]:
    """Cluster-bootstrap percentile CI for each metric: whole groups (utterances) are resampled.

    ``metric_fns`` maps names to confusion-matrix metrics (default: :data:`METRICS`). Pass
    ``groups=np.arange(n)`` to get the naive per-block bootstrap. Returns
    ``{name: {"value", "low", "high", "n_groups", "n_resamples"}}``; ``value`` is the
    metric on the full data, ``low``/``high`` the ``alpha/2`` and ``1 - alpha/2`` quantiles.
    """
    _check_settings(n_resamples, alpha)
    fns = dict(METRICS if metric_fns is None else metric_fns)
    if not fns:
        raise ValueError("metric_fns is empty")
    truth, (pred,), codes, k = _prepare(y_true, [y_pred], groups, n_classes)
    n_groups = int(codes.max()) + 1
    per_group = group_confusions(truth, pred, codes, n_groups, k)
    counts = resample_counts(np.random.default_rng(seed), n_groups, int(n_resamples))
    cms = resampled_confusions(per_group, counts)
    full = per_group.sum(axis=0)
    out: dict[str, dict[str, float | int]] = {}
    for name, fn in fns.items():
        low, high = _interval(_apply(fn, name, cms), alpha)
        out[name] = {"value": float(_apply(fn, name, full)), "low": low, "high": high,
                     "n_groups": n_groups, "n_resamples": int(n_resamples)}
    return out


def paired_difference_ci(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike, groups: ArrayLike,
                         metric: MetricFn | str = "wa", n_resamples: int = 1000, seed: int = 0,
                         alpha: float = 0.05, n_classes: int | None = None) -> dict[str, float | bool]:
    """Paired cluster-bootstrap CI for ``metric(b) - metric(a)`` on the same test blocks.

    Both arms are scored on the *same* resampled utterances in every replicate, so the
    utterance difficulty they share cancels out of the difference: far tighter (and
    correct) compared with two independent intervals, which would ignore the pairing.
    ``excludes_zero`` is True when the interval lies strictly on one side of 0.
    """
    _check_settings(n_resamples, alpha)
    name, fn = _resolve_metric(metric)
    truth, (a, b), codes, k = _prepare(y_true, [pred_a, pred_b], groups, n_classes)
    n_groups = int(codes.max()) + 1
    per_a = group_confusions(truth, a, codes, n_groups, k)
    per_b = group_confusions(truth, b, codes, n_groups, k)
    counts = resample_counts(np.random.default_rng(seed), n_groups, int(n_resamples))
    # the same counts for both arms: that is the pairing
    deltas = (_apply(fn, name, resampled_confusions(per_b, counts))
              - _apply(fn, name, resampled_confusions(per_a, counts)))
    delta = float(_apply(fn, name, per_b.sum(axis=0)) - _apply(fn, name, per_a.sum(axis=0)))
    low, high = _interval(deltas, alpha)
    return {"delta": delta, "low": low, "high": high, "excludes_zero": bool(low > 0.0 or high < 0.0)}


def _resolve_metric(metric: MetricFn | str) -> tuple[str, MetricFn]:
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
        return metric, METRICS[metric]
    return getattr(metric, "__name__", "metric"), metric


def mean_std(values: ArrayLike) -> dict[str, float | int]:
    """Mean and sample std (ddof=1) across CV folds / seeds; std is 0.0 for a single value."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def arm_difference_ci(y_true: ArrayLike, preds_a: Sequence[ArrayLike], preds_b: Sequence[ArrayLike],
                      groups: ArrayLike, metric: MetricFn | str = "wa", n_resamples: int = 1000, seed: int = 0,
                      alpha: float = 0.05, n_classes: int | None = None) -> dict[str, float | bool]:
    """Paired cluster-bootstrap CI for ``mean_b(metric) - mean_a(metric)`` over several runs per arm.

    Each arm is a list of prediction vectors on the *same* test blocks (e.g. one per seed or
    CV fold); every replicate scores every run on the same resampled utterances and takes the
    difference of the two arms' means. The interval therefore covers the test-set sampling of
    that difference, not the run-to-run spread of training (report that separately, with
    :func:`mean_std`). With one run per arm this is exactly :func:`paired_difference_ci`.
    """
    _check_settings(n_resamples, alpha)
    if not preds_a or not preds_b:
        raise ValueError("each arm needs at least one prediction vector")
    name, fn = _resolve_metric(metric)
    truth, preds, codes, k = _prepare(y_true, [*preds_a, *preds_b], groups, n_classes)
    n_groups = int(codes.max()) + 1
    per_run = [group_confusions(truth, p, codes, n_groups, k) for p in preds]
    counts = resample_counts(np.random.default_rng(seed), n_groups, int(n_resamples))
    n_a = len(preds_a)

    def arm_mean(runs: list[np.ndarray], resampled: bool) -> np.ndarray:
        values = [_apply(fn, name, resampled_confusions(g, counts) if resampled else g.sum(axis=0)) for g in runs]
        return np.mean(values, axis=0)

    deltas = arm_mean(per_run[n_a:], True) - arm_mean(per_run[:n_a], True)
    delta = float(arm_mean(per_run[n_a:], False) - arm_mean(per_run[:n_a], False))
    low, high = _interval(deltas, alpha)
    return {"delta": delta, "low": low, "high": high, "excludes_zero": bool(low > 0.0 or high < 0.0)}
