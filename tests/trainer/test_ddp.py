"""End to end under torchrun (gloo, 2 CPU processes): DDP training, uneven shards, restarts.

Slow by nature (each torchrun starts two Python processes that import torch); kept to a
few AlexNet steps of 2 images per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from serwild.checkpoint import load_checkpoint
from serwild.trainer.model import LAYER_MODULES, model_from_checkpoint
from serwild.trainer.train import FAULT_ENV
from tests.trainer.conftest import overrides, torchrun

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
LR, NEW_LR, GAMMA = 4e-4, 0.01, 0.2


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _lrs(epoch: int) -> list[float]:  # paper recipe, lr_step=1: decay after every epoch
    return [LR * GAMMA ** (epoch - 1), NEW_LR * GAMMA ** (epoch - 1)]


@pytest.fixture(scope="module")
def ddp_run(tiny_build: Path, weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks, paper recipe from a weights file, validating on fold 0: 2 epochs × 2 steps."""
    runs = tmp_path_factory.mktemp("ddp_runs")
    args = overrides(tiny_build, runs, **{"train.pretrained": weights_file, "train.lr_step": 1, "cv.fold": 0,
                                          "train.num_workers": 1, "train.name": "two"})
    proc = torchrun(["-m", "serwild.trainer", *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "two"


def test_two_ranks_ran_the_same_batches(ddp_run: Path, manifest: dict) -> None:
    lines = _metrics(ddp_run)
    assert [r["epoch"] for r in lines] == [1, 2]
    fold0 = sum(s["count"] for s in manifest["shards"]
                if s["split"] == "train" and s["fold"] == 0 and s["condition"] == "clean")
    for r in lines:
        assert r["batches_per_rank"] == [2, 2] and r["samples"] == 8 and r["world_size"] == 2
        assert r["lr"] == pytest.approx(_lrs(r["epoch"]))
        assert r["recipe"] == "paper" and r["val"]["n"] == fold0  # each validation sample once
        assert 0.0 <= r["val"]["weighted_f1"] <= 1.0 and r["images_per_s"] > 0
    cfg = yaml.safe_load((ddp_run / "config.yaml").read_text())
    assert cfg["train"]["recipe"] == "paper" and cfg["train"]["freeze"] == ["conv1", "conv2", "conv3", "conv4"]
    assert (ddp_run / "curves.png").stat().st_size > 0


def test_checkpoint_loads_and_describes_the_run(ddp_run: Path, manifest: dict) -> None:
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(ddp_run / name)
        assert ck["manifest_fingerprint"] == manifest["fingerprint"]
        assert ck["classes"] == manifest["datasets"]["ahsn"]["classes"] and ck["dataset"] == "ahsn"
        assert ck["recipe"]["name"] == "paper" and ck["recipe"]["frozen"] == ["conv1", "conv2", "conv3", "conv4"]
        assert ck["world_size"] == 2 and ck["config"]["cv"]["fold"] == 0
        # Only last.pt holds what resuming needs (every rank's RNG, the optimiser); best.pt is weights.
        assert (len(ck["rng"]) == 2 and "optimizer" in ck) if name == "last.pt" else \
            ("rng" not in ck and "optimizer" not in ck)
        assert not any(k.startswith("module.") for k in ck["model"])
        with torch.no_grad():
            assert model_from_checkpoint(ck)(torch.zeros(1, 3, 256, 256)).shape == (1, 4)
    assert load_checkpoint(ddp_run / "last.pt")["epoch"] == 2


def test_frozen_layers_bit_identical_trained_layers_changed(ddp_run: Path, weights_file: Path) -> None:
    start = torch.load(weights_file, weights_only=True)
    end = load_checkpoint(ddp_run / "last.pt")["model"]
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        for p in ("weight", "bias"):
            key = f"{LAYER_MODULES[layer]}.{p}"
            assert torch.equal(end[key], start[key]), key
    for layer in ("conv5", "fc6", "fc7"):
        key = f"{LAYER_MODULES[layer]}.weight"
        assert not torch.equal(end[key], start[key]), key


def test_resume_continues_at_the_next_epoch_with_the_decayed_lr(ddp_run: Path, tmp_path: Path,
                                                                tiny_build: Path, weights_file: Path) -> None:
    shutil.copytree(ddp_run, tmp_path / "two")
    before = _metrics(tmp_path / "two")
    args = overrides(tiny_build, tmp_path, **{"train.pretrained": weights_file, "train.lr_step": 1, "cv.fold": 0,
                                              "train.name": "two", "train.epochs": 3})
    proc = subprocess.run([sys.executable, "-m", "serwild.trainer", "--resume", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "after epoch 2" in proc.stderr
    lines = _metrics(tmp_path / "two")
    assert lines[:2] == before and lines[2]["epoch"] == 3
    assert lines[2]["lr"] == pytest.approx(_lrs(3)) and lines[2]["batches_per_rank"] == [2]  # 1 rank × batch 4
    ck = load_checkpoint(tmp_path / "two" / "last.pt")
    assert ck["epoch"] == 3 and ck["scheduler"]["last_epoch"] == 3


def test_killed_rank_is_restarted_and_resumes(tiny_build: Path, weights_file: Path, tmp_path: Path) -> None:
    """Rank 1 dies in epoch 2; torchrun --max-restarts restarts both, which resume from last.pt."""
    args = overrides(tiny_build, tmp_path, **{"train.pretrained": weights_file, "train.lr_step": 1,
                                              "cv.fold": None, "train.name": "killed"})
    (tmp_path / "cfg.yaml").write_text("seed: 0\n")  # everything else comes as overrides
    cmd = [sys.executable, "-m", "serwild", "train", "--nproc", "2", "--max-restarts", "1",
           "--config", str(tmp_path / "cfg.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          env={**os.environ, FAULT_ENV: "1:0:1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{FAULT_ENV}: rank 1 exits at epoch 1" in proc.stderr and "after epoch 1" in proc.stderr
    run = tmp_path / "killed"
    lines = _metrics(run)
    assert [r["epoch"] for r in lines] == [1, 2]  # epoch 2 redone once, epoch 1 not repeated
    assert lines[1]["lr"] == pytest.approx(_lrs(2)) and lines[1]["batches_per_rank"] == [2, 2]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and (run / "best.pt").is_file()


def test_one_or_three_shards_for_two_ranks_do_not_hang(tiny_build: Path, manifest: dict, tmp_path: Path) -> None:
    records = [s for s in manifest["shards"] if s["split"] == "train" and s["condition"] == "clean"]
    odd = sorted(records, key=lambda s: (s["count"] % 2 == 0, s["path"]))  # odd counts first
    cases = {"1": odd[:1], "3": odd[:3]}
    spec = {"batches": 5, "cases": {k: {"urls": [str(tiny_build / r["path"]) for r in v],
                                        "counts": [r["count"] for r in v]} for k, v in cases.items()}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = torchrun([str(HERE / "ddp_loader_check.py"), str(tmp_path / "spec.json"), str(tmp_path / "out.json")],
                    timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    for name, recs in cases.items():
        assert result[name]["train_batches"] == [5, 5]
        keys = [k for rank_keys in result[name]["eval_keys"] for k in rank_keys]
        expected = []
        for r in recs:
            with tarfile.open(tiny_build / r["path"]) as tf:
                expected += sorted({m.name.split(".", 1)[0] for m in tf if m.isfile()})
        assert sorted(keys) == sorted(expected)  # every sample exactly once over the two ranks
    assert result["1"]["eval_keys"][1] == []  # the rank without a shard read nothing, and returned
