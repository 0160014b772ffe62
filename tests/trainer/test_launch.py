"""``serwild train``: the torchrun command line, early refusals, and the --cv fold loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serwild import torchrun
from serwild.cli import main as cli
from serwild.trainer import launch
from tests.trainer.conftest import overrides


def test_torchrun_command() -> None:
    opts = launch.LaunchOptions(config="c.yaml", overrides=["train.epochs=1"], nproc=2)
    cmd = torchrun.command(launch.MODULE, launch.rank_args(opts, []), 2, 0)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("-m", 2):] == ["-m", "serwild.trainer", "--config", "c.yaml", "train.epochs=1"]
    restarts = launch.rank_args(launch.LaunchOptions(config=None, overrides=[], nproc=1, max_restarts=3), [])
    assert restarts == ["--resume"]


def test_refusals_come_before_torchrun(tiny_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchrun, "launch", lambda cmd, nproc: pytest.fail("torchrun must not start"))
    args = overrides(tiny_build, tmp_path)
    assert cli(["train", "--resume", *args]) == 2
    assert "nothing to continue" in capsys.readouterr().err
    (tmp_path / "ahsn-clean").mkdir()
    (tmp_path / "ahsn-clean" / "last.pt").write_bytes(b"x")
    assert cli(["train", *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli(["train", "--cv", *args, "cv.fold=1"]) == 2
    assert cli(["train", *overrides(tmp_path / "nothing", tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_cv_trains_every_fold_then_summarises(tiny_build: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    launched = []

    def fake_launch(cmd: list[str], nproc: int) -> int:  # stands in for torchrun: writes a fold's run
        opts = dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("--"))
        fold, run = int(opts["cv.fold"]), tmp_path / opts["train.name"]
        launched.append((fold, opts["train.name"], nproc))
        run.mkdir(exist_ok=True)  # the launcher made it, for its lock
        f1 = 0.2 + 0.1 * fold * (fold % 2)
        val = {"accuracy": f1, "ua": f1, "weighted_f1": f1, "macro_f1": f1}
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val": val, "recipe": "scratch"}) + "\n")
        (run / "best.pt").write_bytes(str(fold).encode())
        return 0

    monkeypatch.setattr(torchrun, "launch", fake_launch)
    assert cli(["train", "--cv", "--nproc", "2", *overrides(tiny_build, tmp_path)]) == 0
    assert launched == [(k, f"ahsn-clean-fold{k}", 2) for k in range(5)]
    summary = json.loads((tmp_path / "ahsn-clean-cv" / "cv.json").read_text())
    assert summary["best_fold"] == 3 and (tmp_path / "ahsn-clean-cv" / "best.pt").read_bytes() == b"3"
