"""Validation by default: a run with no CV fold validates on the build's validation part, keeps
best.pt by it, draws validation loss and training accuracy, stops early under train.patience,
and a run whose loss was still falling steeply at its last epoch is flagged as under-trained."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from serwild.evaluate.document import Report
from serwild.evaluate.health import model_flags
from serwild.trainer.history import STILL_FALLING, learning_note
from serwild.trainer.train import main as train_main
from tests.trainer.conftest import tiny_build, tiny_config  # noqa: F401 (fixture)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_validates_on_the_builds_validation_part_by_default(tiny_build: Path, tmp_path: Path,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    n_val = sum(r["count"] for r in manifest["shards"] if r["split"] == "validation" and r["condition"] == "clean")
    assert n_val > 0
    train_main(tiny_config(tiny_build, tmp_path, **{"train.name": "v", "train.epochs": 3, "cv.fold": None}))
    history = _history(tmp_path / "v")
    assert [r["val"]["n"] for r in history] == [n_val] * 3  # every clean validation block, each epoch
    assert all(r["val"]["loss"] > 0 and 0 <= r["train_accuracy"] <= 1 for r in history)
    scores = [r["val"]["weighted_f1"] for r in history]
    best = torch.load(tmp_path / "v" / "last.pt", weights_only=True)["best"]
    assert best["epoch"] == 1 + scores.index(max(scores))  # best.pt chosen on validation, the first of ties
    assert "no validation" not in capsys.readouterr().err


def test_patience_stops_a_run_that_no_longer_improves_and_a_resume_stops_again(
        tiny_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    # lr at its floor: the weights barely move, so validation cannot improve after epoch 1
    cfg = tiny_config(tiny_build, tmp_path, **{"train.name": "p", "train.epochs": 6, "train.patience": 2,
                                                "train.scratch_lr": 1e-12, "cv.fold": None})
    train_main(cfg)
    history = _history(tmp_path / "p")
    err = capsys.readouterr().err
    assert [r["epoch"] for r in history] == [1, 2, 3], err[-2000:]
    assert "early stop before epoch 4/6: validation weighted_f1 has not improved for 2 epoch(s)" in err
    train_main(cfg, resume=True)
    assert len(_history(tmp_path / "p")) == 3 and "early stop before epoch 4/6" in capsys.readouterr().err


def test_learning_note_reads_the_last_epochs_loss() -> None:
    def rec(epoch: int, train: float, val: float | None = None) -> dict:
        return {"epoch": epoch, "train_loss": train, "val": None if val is None else {"loss": val}}

    steep = 1 - STILL_FALLING["validation"] * 2
    assert learning_note([rec(1, 1.0, 1.0)]) is None  # one epoch says nothing
    note = learning_note([rec(1, 1.2, 1.0), rec(2, 1.0, steep)])
    assert note is not None and note.startswith("validation loss still falling at its last epoch (1.000 → 0.900")
    assert learning_note([rec(1, 1.2, 1.0), rec(2, 0.6, 0.99)]) is None  # levelled off on validation
    assert learning_note([rec(1, 1.2, 0.8), rec(2, 0.6, 1.0), rec(3, 0.5, 0.85)]) is None  # not its lowest
    note = learning_note([rec(1, 1.33), rec(2, 0.83)])  # no validation: the training loss
    assert note is not None and note.startswith("training loss still falling")
    assert learning_note([rec(1, 1.0), rec(2, 0.95)]) is None


def test_an_under_trained_run_is_flagged_wherever_flags_are_shown() -> None:
    cm = [[5, 1], [1, 5]]
    cond = {"snr_db": None, "block": {"confusion": cm, "per_class": {"a": {"support": 6}, "b": {"support": 6}}}}
    result = Report(run="r", classes=["a", "b"], conditions={"clean": cond},
                    budget={"still_learning": "training loss still falling at its last epoch (…)"})
    flags = model_flags(result)
    assert flags["still_learning"] and flags["messages"] == [
        "UNDER-TRAINED: training loss still falling at its last epoch (…)"]
    assert model_flags(replace(result, budget={"still_learning": None}))["messages"] == []
