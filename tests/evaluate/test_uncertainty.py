"""Cluster-bootstrap intervals: exact point values, determinism, pairing, clustering, coverage.

Self-contained (no conftest fixtures): every dataset is simulated here from a fixed seed. The
metrics themselves are checked against scikit-learn in test_metrics.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix

from serwild.evaluate.uncertainty import (
    arm_difference_ci,
    bootstrap_ci,
    group_confusions,
    mean_std,
    resample_counts,
    resampled_confusions,
)
from serwild.metrics import METRICS
from tests.evaluate.test_metrics import sklearn_metrics

K = 4


def clustered(rng: np.random.Generator, n_utts: int, p: float, concentration: float, k: int = K,
              max_blocks: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, y_pred, groups): utterances of 1..max_blocks blocks; each utterance has its own
    accuracy p_u ~ Beta(mean p, a+b=concentration), so its blocks' errors are correlated.
    Population block accuracy is exactly p (p_u is independent of the block count)."""
    n_blocks = rng.integers(1, max_blocks + 1, size=n_utts)
    groups = np.repeat(np.arange(n_utts), n_blocks)
    p_u = rng.beta(p * concentration, (1 - p) * concentration, size=n_utts)
    y_true = np.repeat(rng.integers(0, k, size=n_utts), n_blocks)  # one label per utterance
    correct = rng.random(groups.size) < p_u[groups]
    wrong = (y_true + rng.integers(1, k, size=groups.size)) % k  # any other class
    return y_true, np.where(correct, y_true, wrong), groups


# ------------------------------------------------------------------------------ resampling

def test_resampled_confusion_is_the_confusion_of_the_resampled_blocks() -> None:
    # the vectorised trick (weighted sum of per-utterance matrices) vs. literally rebuilding
    # each resampled dataset from the drawn utterances
    rng = np.random.default_rng(2)
    y_true, y_pred, groups = clustered(rng, 30, 0.6, 3.0)
    per_group = group_confusions(y_true, y_pred, groups, 30, K)
    counts = resample_counts(np.random.default_rng(3), 30, 5)
    assert counts.shape == (5, 30) and (counts.sum(axis=1) == 30).all()
    cms = resampled_confusions(per_group, counts)
    for r in range(5):
        idx = np.concatenate([np.flatnonzero(groups == g) for g in range(30) for _ in range(counts[r, g])])
        np.testing.assert_array_equal(cms[r], confusion_matrix(y_true[idx], y_pred[idx], labels=list(range(K))))


# ------------------------------------------------------------------------------ bootstrap_ci

def test_bootstrap_ci_shape_and_point_values() -> None:
    rng = np.random.default_rng(4)
    y_true, y_pred, groups = clustered(rng, 80, 0.7, 3.0)
    utt_ids = np.array([f"utt{g:03d}" for g in groups])  # string ids work like ints
    out = bootstrap_ci(y_true, y_pred, utt_ids, n_resamples=200, seed=1, n_classes=K)
    expected = sklearn_metrics(y_true, y_pred, K)
    assert set(out) == set(METRICS)
    for name, ci in out.items():
        assert ci["value"] == pytest.approx(expected[name], abs=1e-12), name
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["n_groups"] == 80 and ci["n_resamples"] == 200
    assert out["wa"]["high"] - out["wa"]["low"] > 0


def test_same_seed_same_interval_other_seed_differs() -> None:
    rng = np.random.default_rng(5)
    y_true, y_pred, groups = clustered(rng, 60, 0.7, 3.0)
    first = bootstrap_ci(y_true, y_pred, groups, n_resamples=300, seed=7)
    again = bootstrap_ci(y_true, y_pred, groups, n_resamples=300, seed=7)
    other = bootstrap_ci(y_true, y_pred, groups, n_resamples=300, seed=8)
    assert first == again  # bit-identical
    assert (first["wa"]["low"], first["wa"]["high"]) != (other["wa"]["low"], other["wa"]["high"])
    pa = arm_difference_ci(y_true, [y_pred], [y_true], groups, "wa", n_resamples=300, seed=7)
    assert pa == arm_difference_ci(y_true, [y_pred], [y_true], groups, "wa", n_resamples=300, seed=7)


def test_cluster_interval_wider_than_naive_block_interval_on_correlated_blocks() -> None:
    # every block of an utterance is right or wrong together: 10 blocks carry one block's evidence
    rng = np.random.default_rng(6)
    n_utts, blocks = 100, 10
    groups = np.repeat(np.arange(n_utts), blocks)
    y_true = np.repeat(rng.integers(0, K, n_utts), blocks)
    utt_correct = np.repeat(rng.random(n_utts) < 0.7, blocks)
    y_pred = np.where(utt_correct, y_true, (y_true + 1) % K)
    cluster = bootstrap_ci(y_true, y_pred, groups, n_resamples=1000, seed=0)["wa"]
    naive = bootstrap_ci(y_true, y_pred, np.arange(groups.size), n_resamples=1000, seed=0)["wa"]
    cluster_w, naive_w = cluster["high"] - cluster["low"], naive["high"] - naive["low"]
    assert cluster["value"] == naive["value"]
    # theory: sqrt(10) ~ 3.2x wider; leave room for Monte Carlo noise
    assert cluster_w > 2.0 * naive_w, (cluster_w, naive_w)
    assert naive["n_groups"] == groups.size and cluster["n_groups"] == n_utts


def test_coverage_of_95_percent_interval_matches_nominal() -> None:
    # 200 independent test sets drawn from a population whose block accuracy is exactly 0.7,
    # with strong within-utterance correlation (ICC = 1/(3+1) = 0.25): the utterance-level
    # interval must cover 0.7 about 95% of the time; the naive block interval must not.
    p, sims = 0.7, 200
    cover_cluster = cover_naive = 0
    for sim in range(sims):
        y_true, y_pred, groups = clustered(np.random.default_rng(10_000 + sim), 100, p, 3.0)
        ci = bootstrap_ci(y_true, y_pred, groups, n_resamples=400, seed=sim)["wa"]
        cover_cluster += ci["low"] <= p <= ci["high"]
        naive = bootstrap_ci(y_true, y_pred, np.arange(groups.size), n_resamples=400, seed=sim)["wa"]
        cover_naive += naive["low"] <= p <= naive["high"]
    coverage = cover_cluster / sims
    # binomial sd at 95% over 200 sims is 0.015; percentile intervals run slightly short
    assert 0.88 <= coverage <= 0.99, coverage
    assert cover_naive / sims < 0.88, cover_naive / sims


# ------------------------------------------------------------------------------ paired differences

def test_paired_difference_excludes_zero_when_b_is_clearly_better() -> None:
    rng = np.random.default_rng(8)
    y_true, pred_a, groups = clustered(rng, 150, 0.6, 3.0)
    # b fixes 60% of a's wrong blocks and breaks nothing
    fix = (pred_a != y_true) & (rng.random(y_true.size) < 0.6)
    pred_b = np.where(fix, y_true, pred_a)
    out = arm_difference_ci(y_true, [pred_a], [pred_b], groups, "wa", n_resamples=1000, seed=0)
    assert out["delta"] == pytest.approx(accuracy_score(y_true, pred_b) - accuracy_score(y_true, pred_a))
    assert out["delta"] > 0.15
    assert out["excludes_zero"] and out["low"] > 0
    assert out["low"] <= out["delta"] <= out["high"]
    # reversed arms: same interval mirrored
    back = arm_difference_ci(y_true, [pred_b], [pred_a], groups, "wa", n_resamples=1000, seed=0)
    assert back["delta"] == pytest.approx(-out["delta"])
    assert (back["low"], back["high"]) == pytest.approx((-out["high"], -out["low"]))


def test_paired_difference_includes_zero_when_arms_are_equally_good() -> None:
    rng = np.random.default_rng(9)
    y_true, pred_a, groups = clustered(rng, 150, 0.7, 3.0)
    same = arm_difference_ci(y_true, [pred_a], [pred_a], groups, "macro_f1", n_resamples=500, seed=0)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}
    # b: a with noise -- it fixes 40 of a's wrong blocks and breaks 40 of its right ones
    right, wrong = np.flatnonzero(pred_a == y_true), np.flatnonzero(pred_a != y_true)
    pred_b = pred_a.copy()
    fixed, broken = rng.choice(wrong, 40, replace=False), rng.choice(right, 40, replace=False)
    pred_b[fixed] = y_true[fixed]
    pred_b[broken] = (y_true[broken] + 1) % K
    assert accuracy_score(y_true, pred_b) == accuracy_score(y_true, pred_a)
    for metric in ("wa", "ua", "weighted_f1"):
        out = arm_difference_ci(y_true, [pred_a], [pred_b], groups, metric, n_resamples=1000, seed=0)
        assert out["low"] < 0 < out["high"], (metric, out)
        assert not out["excludes_zero"]


def test_pairing_is_tighter_than_independent_intervals() -> None:
    # the shared utterance difficulty cancels in the paired difference
    rng = np.random.default_rng(10)
    y_true, pred_a, groups = clustered(rng, 150, 0.7, 3.0)
    pred_b = np.where(rng.random(y_true.size) < 0.05, y_true, pred_a)
    paired = arm_difference_ci(y_true, [pred_a], [pred_b], groups, "wa", n_resamples=1000, seed=0)
    ci_a = bootstrap_ci(y_true, pred_a, groups, n_resamples=1000, seed=0)["wa"]
    assert paired["high"] - paired["low"] < 0.5 * (ci_a["high"] - ci_a["low"])


# ------------------------------------------------------------------------------ mean_std and validation

def test_mean_std() -> None:
    assert mean_std([0.5, 0.7, 0.6]) == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    assert mean_std([0.42]) == {"mean": 0.42, "std": 0.0, "n": 1}
    assert mean_std(np.array([1.0, 1.0])) == {"mean": 1.0, "std": 0.0, "n": 2}
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"y_pred": [0, 1]}, "lengths differ"),
    ({"groups": [0, 0]}, "lengths differ"),
    ({"n_resamples": 0}, "n_resamples"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"),
    ({"y_true": [], "y_pred": [], "groups": []}, "empty"),
    ({"y_pred": [0.5, 1.0, 0.0]}, "integer"),
    ({"y_pred": [0, -1, 1]}, "negative"),
    ({"n_classes": 1}, "n_classes"),
])
def test_bootstrap_ci_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"y_true": [0, 1, 1], "y_pred": [0, 1, 0], "groups": [0, 0, 1]} | kwargs
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**args)


def test_paired_difference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        arm_difference_ci([0, 1, 1], [[0, 1, 1]], [[0, 1]], [0, 1, 2], "wa")
    with pytest.raises(ValueError, match="unknown metric"):
        arm_difference_ci([0, 1], [[0, 1]], [[0, 1]], [0, 1], "auc")
    with pytest.raises(ValueError, match="alpha"):
        arm_difference_ci([0, 1], [[0, 1]], [[0, 1]], [0, 1], "wa", alpha=1.5)
    with pytest.raises(ValueError, match="at least one"):
        arm_difference_ci([0, 1], [], [[0, 1]], [0, 1], "wa")
