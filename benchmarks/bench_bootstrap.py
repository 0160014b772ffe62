"""The cluster bootstrap's speed: serwild's vectorised engine vs the usual per-replicate loop.

    .venv/bin/python benchmarks/bench_bootstrap.py                    # 2000 blocks, 400 utterances, 1000 replicates
    .venv/bin/python benchmarks/bench_bootstrap.py --blocks 8000 --resamples 2000

Both draw whole utterances with replacement and score every metric of serwild.metrics.METRICS
on each replicate. serwild (:func:`serwild.evaluate.uncertainty.bootstrap_ci`) sums one
confusion matrix per utterance once, then forms all replicates' matrices in one product and
scores them in one call per metric. The baseline is what a script usually does: per replicate,
gather the drawn utterances' blocks and call scikit-learn's metrics on them. Both run here, on
the same data, in the same process, best of ``--repeat``; the script prints both times, the
ratio, and checks that the two agree on every metric's value on the full data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

from serwild.evaluate.uncertainty import bootstrap_ci
from serwild.metrics import METRICS

K = 4


def sklearn_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    labels = list(range(K))
    out = {"wa": accuracy_score(y_true, y_pred), "ua": balanced_accuracy_score(y_true, y_pred)}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out |= {f"{avg}_precision": p, f"{avg}_recall": r, f"{avg}_f1": f}
    return {k: float(v) for k, v in out.items()}


def baseline(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_resamples: int) -> dict[str, tuple]:
    """Percentile intervals from a loop over replicates, scikit-learn scoring each."""
    rng = np.random.default_rng(0)
    members = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]
    reps: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[g] for g in drawn])
        for name, value in sklearn_scores(y_true[idx], y_pred[idx]).items():
            reps[name].append(value)
    return {name: tuple(np.quantile(v, [0.025, 0.975])) for name, v in reps.items()}


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--utterances", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    groups = np.unique(np.sort(rng.integers(0, args.utterances, size=args.blocks)), return_inverse=True)[1]
    y_true = rng.integers(0, K, size=args.blocks)
    y_pred = np.where(rng.random(args.blocks) < 0.7, y_true, rng.integers(0, K, size=args.blocks))

    ours_s, ours = best_of(args.repeat, lambda: bootstrap_ci(y_true, y_pred, groups, args.resamples, seed=0,
                                                             n_classes=K))
    base_s, _ = best_of(args.repeat, lambda: baseline(y_true, y_pred, groups, args.resamples))
    full = sklearn_scores(y_true, y_pred)
    differ = [n for n in METRICS if abs(ours[n]["value"] - full[n]) > 1e-12]
    print(f"{args.blocks} blocks, {groups.max() + 1} utterances, {args.resamples} replicates, "
          f"{len(METRICS)} metrics, best of {args.repeat}")
    print(f"serwild (vectorised): {ours_s:8.3f} s")
    print(f"baseline (loop + scikit-learn): {base_s:8.3f} s")
    print(f"ratio: {base_s / ours_s:.1f}x; values on the full data agree with scikit-learn: "
          f"{'yes' if not differ else 'NO: ' + ', '.join(differ)}")


if __name__ == "__main__":
    main()
