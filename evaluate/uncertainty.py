"""Honest uncertainty for classification metrics: cluster bootstrap CIs and paired differences.

Why a *cluster* bootstrap: the blocks of one utterance share a speaker, a sentence and a recording,
so their errors are strongly correlated; resampling blocks would pretend ~5x more evidence and give
far too narrow intervals. Each replicate draws whole utterances (``groups``) with replacement. Every
metric is a function of the confusion matrix, and a resampled one is a weighted sum of per-utterance
matrices, so each replicate is one row of a matrix product (1000 over 400 utterances: milliseconds).
Plain percentile intervals; seeds go through ``np.random.default_rng``: same seed, same interval, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serwild.metrics import METRICS

ArrayLike = Sequence[Any] | np.ndarray


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
    """``(n_resamples, n_groups)``: how often each group is drawn in each replicate (uniformly, with
    replacement); one bincount counts the draws without materialising the resampled data."""
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    offsets = np.arange(n_resamples, dtype=np.int64)[:, None] * n_groups
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)


def resampled_confusions(per_group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(n_resamples, K, K)``: each replicate's confusion matrix = Σ_g counts[g] · per_group[g]."""
    g, k, _ = per_group.shape
    # int64 matmul stays exact (float64 would be too, up to 2**53 blocks)
    return (counts @ per_group.reshape(g, k * k)).reshape(-1, k, k)


def _apply(metric: str, cms: np.ndarray) -> np.ndarray:
    return np.asarray(METRICS[metric].fn(cms), dtype=np.float64)


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def bootstrap_ci(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, n_resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05, n_classes: int | None = None) -> dict[str, dict[str, float | int]]:
    """Cluster-bootstrap percentile CI for every metric of serwild.metrics.METRICS: whole groups
    (utterances) are resampled; ``groups=np.arange(n)`` gives the naive per-block bootstrap."""
    _check_settings(n_resamples, alpha)
    truth, (pred,), codes, k = _prepare(y_true, [y_pred], groups, n_classes)
    n_groups = int(codes.max()) + 1
    per_group = group_confusions(truth, pred, codes, n_groups, k)
    counts = resample_counts(np.random.default_rng(seed), n_groups, int(n_resamples))
    cms = resampled_confusions(per_group, counts)
    full = per_group.sum(axis=0)
    out: dict[str, dict[str, float | int]] = {}
    for name in METRICS:
        low, high = _interval(_apply(name, cms), alpha)
        out[name] = {"value": float(_apply(name, full)), "low": low, "high": high,
                     "n_groups": n_groups, "n_resamples": int(n_resamples)}
    return out


def mean_std(values: ArrayLike) -> dict[str, float | int]:
    """Mean and sample std (ddof=1) across CV folds / seeds; std is 0.0 for a single value."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("mean_std of no values")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def arm_difference_ci(y_true: ArrayLike, preds_a: Sequence[ArrayLike], preds_b: Sequence[ArrayLike],
                      groups: ArrayLike, metric: str = "wa", n_resamples: int = 1000, seed: int = 0,
                      alpha: float = 0.05, n_classes: int | None = None) -> dict[str, float | bool]:
    """Paired cluster-bootstrap CI for ``mean_b(metric) - mean_a(metric)`` over the runs of two arms.

    Each arm is a list of prediction vectors on the *same* test blocks, one per run (seed, CV fold).
    Every replicate scores every run on the same resampled utterances: that is the pairing, so the
    difficulty the arms share cancels (far tighter than two independent intervals). The interval covers
    the test-set sampling of the difference, not training's run-to-run spread (report that with :func:`mean_std`).
    """
    _check_settings(n_resamples, alpha)
    _check_metric(metric)
    if not preds_a or not preds_b:
        raise ValueError("each arm needs at least one prediction vector")
    truth, preds, codes, k = _prepare(y_true, [*preds_a, *preds_b], groups, n_classes)
    n_groups = int(codes.max()) + 1
    per_run = [group_confusions(truth, p, codes, n_groups, k) for p in preds]
    counts = resample_counts(np.random.default_rng(seed), n_groups, int(n_resamples))
    n_a = len(preds_a)

    def arm_mean(runs: list[np.ndarray], resampled: bool) -> np.ndarray:
        values = [_apply(metric, resampled_confusions(g, counts) if resampled else g.sum(axis=0)) for g in runs]
        return np.mean(values, axis=0)

    deltas = arm_mean(per_run[n_a:], True) - arm_mean(per_run[:n_a], True)
    delta = float(arm_mean(per_run[n_a:], False) - arm_mean(per_run[:n_a], False))
    low, high = _interval(deltas, alpha)
    return {"delta": delta, "low": low, "high": high, "excludes_zero": bool(low > 0.0 or high < 0.0)}
