"""`serwild reproduce`'s experiment plan and its refusal of another config's run folder, without
training. What a run folder holds (empty, started, partial, done, another run's) is the
trainer's one answer, ``serwild.trainer.preflight.run_state``, tested in tests/trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from serwild.config import load_config, to_dict
from serwild.data.manifest import DatasetInfo, Manifest
from serwild.data.records import ShardRecord
from serwild.errors import UsageError
from serwild.pipelines import protocol, reproduce
from serwild.trainer.preflight import resolve

FP = "f" * 64


def _run(run_dir: Path, cfg, epoch: int | None = 1, fingerprint: str = FP) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(resolve(cfg)), sort_keys=False))
    if epoch is not None:
        torch.save({"epoch": epoch, "manifest_fingerprint": fingerprint}, run_dir / "last.pt")
        (run_dir / "best.pt").write_bytes((run_dir / "last.pt").read_bytes())
    return run_dir


def _manifest(conditions: dict) -> Manifest:
    shards = tuple(ShardRecord(f"{ds}/train/fold{k}/clean-000000.tar", ds, "train", k, "clean", 1, 1, "0" * 64)
                   for ds in ("ahsn", "aesn") for k in (0, 1, 2))
    return Manifest(fingerprint=FP, datasets={ds: DatasetInfo(("ang", "neu")) for ds in ("ahsn", "aesn")},
                    conditions=conditions, shards=shards)


def test_experiments_follow_the_build() -> None:
    cfg = load_config(None, ["datasets=[ahsn, aesn]"])
    exps = reproduce.experiments(cfg, _manifest({"snr40": 40.0, "clean": None, "snr15": 15.0}))
    assert [(e.dataset, e.number, e.folds) for e in exps] == [
        ("ahsn", 1, [0, 1, 2]), ("ahsn", 2, [0, 1, 2]), ("aesn", 1, [0, 1, 2]), ("aesn", 2, [0, 1, 2])]
    assert exps[1].conditions == ["clean", "snr15", "snr40"] and exps[1].base == "protocol-ahsn-exp2"
    assert "train.samples_per_epoch=clean" in exps[1].overrides
    assert not any("samples_per_epoch" in o for o in exps[0].overrides)
    # a config that sets samples_per_epoch keeps it; train.name prefixes the run names
    own = reproduce.experiments(load_config(None, ["train.samples_per_epoch=64", "train.name=mine"]),
                                _manifest({"clean": None, "snr15": 15.0}))
    assert not any("samples_per_epoch" in o for e in own for o in e.overrides) and own[0].base == "mine-ahsn-exp1"
    with pytest.raises(UsageError, match="at least one noisy condition"):
        reproduce.experiments(cfg, _manifest({"clean": None}))


def test_a_run_folder_of_another_config_is_refused(tmp_path: Path) -> None:
    """Resuming must never silently retrain over someone's run: one clear error instead."""
    cfg = load_config(None, [f"train.run_dir={tmp_path}", "train.epochs=3"])
    exp = reproduce.experiments(cfg, _manifest({"clean": None, "snr15": 15.0}))[0]
    theirs = load_config(None, [f"train.run_dir={tmp_path}", "train.epochs=1", *exp.overrides, "cv.fold=0",
                                f"train.name={exp.base}-fold0"])
    _run(tmp_path / f"{exp.base}-fold0", theirs)
    ctx = reproduce.Context(None, [f"train.run_dir={tmp_path}", "train.epochs=3"], cfg, FP, 1, False,
                            protocol.Progress(10, tmp_path / "stages.json"))
    with pytest.raises(UsageError, match=r"holds another run \(train.epochs: 1 → 3\): pass --overwrite"):
        reproduce.run_experiment(exp, ctx)
