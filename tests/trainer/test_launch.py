"""``serwild train``: the torchrun command line, early refusals, and the --cv fold loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serwild.cli import main as cli
from serwild.config import load_config
from serwild.metrics import VALIDATION
from serwild.processes import torchrun
from serwild.trainer import launch
from tests.trainer.conftest import overrides


def test_torchrun_command(tmp_path: Path) -> None:
    """The ranks get the run's spec file and how to start, nothing else."""
    spec = tmp_path / "run" / "config.yaml"
    cmd = torchrun.command(launch.MODULE, launch.rank_args(spec, launch.LaunchOptions(nproc=2)), 2, 0)
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("-m", 2):] == ["-m", "serwild.trainer", "--config", str(spec)]
    restarts = launch.rank_args(spec, launch.LaunchOptions(nproc=1, max_restarts=3))
    assert restarts == ["--config", str(spec), "--resume"]


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
        spec = load_config(cmd[cmd.index("--config") + 1])  # the run's config.yaml, resolved by the launcher
        fold, run = spec.cv.fold, Path(spec.train.run_dir) / spec.train.name
        launched.append((fold, spec.train.name, nproc))
        f1 = 0.2 + 0.1 * fold * (fold % 2)
        val = dict.fromkeys(VALIDATION, f1)
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val": val, "recipe": "scratch"}) + "\n")
        (run / "best.pt").write_bytes(str(fold).encode())
        return 0

    monkeypatch.setattr(torchrun, "launch", fake_launch)
    assert cli(["train", "--cv", "--nproc", "2", *overrides(tiny_build, tmp_path)]) == 0
    assert launched == [(k, f"ahsn-clean-fold{k}", 2) for k in range(5)]
    summary = json.loads((tmp_path / "ahsn-clean-cv" / "cv.json").read_text())
    assert summary["best_fold"] == 3 and (tmp_path / "ahsn-clean-cv" / "best.pt").read_bytes() == b"3"
