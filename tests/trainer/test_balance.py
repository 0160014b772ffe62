"""train.balance: weights — each class's loss weighted by N / (K · n_k) over the training samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from serwild.trainer.recipe import balanced_weights
from serwild.trainer.train import main as train_main
from tests.trainer.conftest import tiny_build, tiny_config  # noqa: F401 (fixture)


def test_balanced_weights_are_scikit_learns() -> None:
    records = [{"class_counts": {"ang": 30, "hap": 5}}, {"class_counts": {"ang": 10, "sad": 15}},
               {"class_counts": {"neu": 40}}]
    classes = ["ang", "hap", "sad", "neu"]
    labels = np.repeat(classes, [40, 5, 15, 40])
    want = compute_class_weight("balanced", classes=np.array(classes), y=labels)
    assert balanced_weights(records, classes) == pytest.approx(want.tolist())
    assert balanced_weights(records, [*classes, "fru"])[-1] == 0.0  # no sample: nothing to weight


def test_a_run_with_balance_weights_trains_and_says_its_weights(tiny_build: Path, tmp_path: Path,  # noqa: F811
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tiny_build, tmp_path, **{"train.name": "w", "train.balance": "weights", "train.epochs": 1,
                                                "cv.fold": None})
    train_main(cfg)
    err = capsys.readouterr().err
    assert "balance weights (ang " in err and (tmp_path / "w" / "best.pt").is_file(), err[-2000:]
