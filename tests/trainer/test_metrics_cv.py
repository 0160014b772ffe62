"""Validation scores (checked against scikit-learn), the curve plot and the CV summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from serwild.metrics import confusion, validation_scores
from serwild.trainer.cv import summarise
from serwild.trainer.history import plot_curves

CLASSES = ["ang", "hap", "sad", "neu"]


def test_scores_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    p[p == 2] = 1  # a class never predicted: zero precision must not give NaN
    # the ranks' confusion matrices summed (here: two halves), then scored once
    cm = confusion(y[:120], p[:120], 4) + confusion(y[120:], p[120:], 4)
    s = validation_scores(cm, CLASSES)
    assert s["n"] == 200
    assert s["wa"] == pytest.approx(accuracy_score(y, p))
    assert s["ua"] == pytest.approx(recall_score(y, p, average="macro"))
    assert s["weighted_f1"] == pytest.approx(f1_score(y, p, average="weighted", zero_division=0))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert np.isfinite([s["wa"], s["ua"], s["weighted_f1"]]).all()


def _fake_run(root: Path, name: str, f1s: list[float], wa: str = "wa") -> None:
    (root / name).mkdir(parents=True)
    lines = [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "recipe": "scratch",
              "val": {wa: f, "ua": f, "weighted_f1": f, "macro_f1": f}} for e, f in enumerate(f1s)]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / name / "best.pt").write_bytes(name.encode())


def test_cv_summary_mean_std_and_best_fold(tmp_path: Path) -> None:
    folds = {0: [0.4, 0.5], 1: [0.7, 0.6], 2: [0.3, 0.55]}
    for k, f1s in folds.items():  # fold 2 trained by an earlier serwild, which called wa "accuracy"
        _fake_run(tmp_path, f"exp-fold{k}", f1s, wa="accuracy" if k == 2 else "wa")
    summary = summarise(tmp_path, "exp", list(folds))
    best = [max(v) for v in folds.values()]
    assert summary["best_fold"] == 1
    assert summary["mean_std"]["weighted_f1"]["mean"] == pytest.approx(np.mean(best))
    assert summary["mean_std"]["weighted_f1"]["std"] == pytest.approx(np.std(best, ddof=1))
    assert summary["folds"]["2"]["epoch"] == 2 and summary["folds"]["2"]["wa"] == 0.55
    assert summarise(tmp_path, "exp", list(folds), "wa")["mean_std"]["wa"]["mean"] == pytest.approx(np.mean(best))
    out = tmp_path / "exp-cv"
    assert (out / "best.pt").read_bytes() == b"exp-fold1"
    assert json.loads((out / "cv.json").read_text())["best_fold"] == 1
    md = (out / "cv.md").read_text()
    assert "mean ± std" in md and "| fold | epoch | WA (accuracy) | UA (macro recall) | weighted F1 | macro F1 |" in md


def test_curve_plot_is_written(tmp_path: Path) -> None:
    records = [{"epoch": 1, "train_loss": 1.3, "val": {"wa": 0.3, "ua": 0.3, "weighted_f1": 0.2}},
               {"epoch": 2, "train_loss": 1.1, "val": {"wa": 0.4, "ua": 0.35, "weighted_f1": 0.3}}]
    out = plot_curves(records, tmp_path / "curves.png", "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_curves([{**r, "val": None} for r in records], tmp_path / "noval.png", "t")
    assert (tmp_path / "noval.png").stat().st_size > 0
