"""Checkpoints: atomic writes, weights_only loading, refusing the wrong build or classes."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from serwild.config import to_dict
from serwild.data.manifest import Manifest
from serwild.errors import UsageError
from serwild.processes.checkpoint import (
    Checkpoint,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from serwild.trainer import train
from serwild.trainer.model import build_model, model_from_checkpoint
from tests.trainer.conftest import tiny_config


class NotAllowed:
    """An arbitrary pickled object: weights_only=True refuses to build it."""


def _ckpt(manifest: Manifest, **over: object) -> Checkpoint:
    ck = {"model": build_model(4, arch="tiny").state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1, "rng": [],
          "config": to_dict(tiny_config(Path("b"), Path("r"))), "classes": ["ang", "hap", "sad", "neu"],
          "dataset": "ahsn", "manifest_fingerprint": manifest.fingerprint, "shards": "b",
          "recipe": {"name": "scratch"}, "metrics": None, "arch": "tiny", "serwild_version": "0"}
    ck.update(over)
    return Checkpoint(**ck)


def test_round_trip_is_atomic_and_weights_only(manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "run" / "last.pt"
    ck = _ckpt(manifest)
    save_checkpoint(path, ck)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    back = load_checkpoint(path)
    assert back.classes == ck.classes and back.config == ck.config and back.to_dict().keys() == ck.to_dict().keys()
    model = model_from_checkpoint(back)  # the architecture the checkpoint names
    assert not model.training and type(model).__name__ == "TinyAlexNet"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ck.model.values()))
    save_checkpoint(path, replace(ck, arch="resnet"))
    with pytest.raises(UsageError, match="architecture 'resnet' is not supported .alexnet, tiny."):
        load_checkpoint(path)


def test_unreadable_checkpoints_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(UsageError, match="junk.pt is not a serwild checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(UsageError, match="not a serwild checkpoint"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({"model": NotAllowed()}, tmp_path / "pickle.pt")
    with pytest.raises(UsageError, match="pickle.pt is not a serwild checkpoint .it holds objects other than"):
        load_checkpoint(tmp_path / "pickle.pt")


def test_wrong_build_or_classes_are_refused(manifest: Manifest) -> None:
    build = ("ahsn", manifest.classes("ahsn"), manifest.fingerprint, "x.pt")
    check_compatible(_ckpt(manifest), *build)
    with pytest.raises(UsageError, match="another build of the shards"):
        check_compatible(_ckpt(manifest, manifest_fingerprint="0" * 64), *build)
    with pytest.raises(UsageError, match="classes"):
        check_compatible(_ckpt(manifest, classes=["ang", "exc", "sad", "neu"]), *build)
    with pytest.raises(UsageError, match="dataset 'aesn'"):
        check_compatible(_ckpt(manifest, dataset="aesn"), *build)


@pytest.mark.parametrize("change", [{"manifest_fingerprint": "f" * 64}, {"classes": ["a", "b", "c", "d"]}])
def test_resume_refuses_a_checkpoint_of_another_build(tiny_build: Path, manifest: Manifest, tmp_path: Path,
                                                      change: dict) -> None:
    cfg = tiny_config(tiny_build, tmp_path / "runs", **{"cv.fold": 0})
    save_checkpoint(tmp_path / "runs" / "ahsn-clean-fold0" / "last.pt", _ckpt(manifest, **change))
    with pytest.raises(UsageError, match="was trained on"):
        train.main(cfg, resume=True)


def test_a_new_run_will_not_overwrite_an_old_one(tiny_build: Path, manifest: Manifest, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "runs" / "ahsn-clean" / "last.pt", _ckpt(manifest))
    with pytest.raises(UsageError, match="--resume"):
        train.main(tiny_config(tiny_build, tmp_path / "runs"))


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
