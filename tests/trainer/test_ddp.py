"""End to end under torchrun (gloo, 2 CPU processes): DDP training, uneven shards, restarts.

Slow by nature (each torchrun starts two Python processes that import torch); kept to a
few AlexNet steps of 2 images per rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from serwild.data.manifest import Manifest
from serwild.processes.checkpoint import load_checkpoint
from serwild.trainer.model import LAYER_MODULES, model_from_checkpoint
from tests.faults import procs
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


def test_two_ranks_ran_the_same_batches(ddp_run: Path, manifest: Manifest) -> None:
    lines = _metrics(ddp_run)
    assert [r["epoch"] for r in lines] == [1, 2]
    fold0 = sum(s.count for s in manifest.shards
                if s.split == "train" and s.fold == 0 and s.condition == "clean")
    for r in lines:
        assert r["batches_per_rank"] == [2, 2] and r["samples"] == 8 and r["world_size"] == 2
        assert r["lr"] == pytest.approx(_lrs(r["epoch"]))
        assert r["recipe"] == "paper" and r["val"]["n"] == fold0  # each validation sample once
        # the kernels the numbers came from (torchrun() pins OMP_NUM_THREADS=1 for the ranks)
        assert re.fullmatch(r"CPU [A-Z0-9_]+, 1 thread\(s\)", r["kernels"]), r["kernels"]
        assert 0.0 <= r["val"]["weighted_f1"] <= 1.0 and r["images_per_s"] > 0
    cfg = yaml.safe_load((ddp_run / "config.yaml").read_text())
    assert cfg["train"]["recipe"] == "paper" and cfg["train"]["freeze"] == ["conv1", "conv2", "conv3", "conv4"]
    assert (ddp_run / "curves.png").stat().st_size > 0


def test_checkpoint_loads_and_describes_the_run(ddp_run: Path, manifest: Manifest) -> None:
    for name in ("last.pt", "best.pt"):
        ck = load_checkpoint(ddp_run / name)
        assert ck.manifest_fingerprint == manifest.fingerprint
        assert ck.classes == manifest.classes("ahsn") and ck.dataset == "ahsn"
        assert ck.recipe["name"] == "paper" and ck.recipe["frozen"] == ["conv1", "conv2", "conv3", "conv4"]
        assert ck.world_size == 2 and ck.config["cv"]["fold"] == 0
        # Only last.pt holds what resuming needs (every rank's RNG, the optimiser); best.pt is weights.
        assert (len(ck.rng) == 2 and ck.optimizer is not None) if name == "last.pt" else \
            (ck.rng is None and ck.optimizer is None)
        assert not any(k.startswith("module.") for k in ck.model)
        with torch.no_grad():
            assert model_from_checkpoint(ck)(torch.zeros(1, 3, 256, 256)).shape == (1, 4)
    assert load_checkpoint(ddp_run / "last.pt").epoch == 2


def test_frozen_layers_bit_identical_trained_layers_changed(ddp_run: Path, weights_file: Path) -> None:
    start = torch.load(weights_file, weights_only=True)
    end = load_checkpoint(ddp_run / "last.pt").model
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
    assert ck.epoch == 3 and ck.scheduler["last_epoch"] == 3


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc: every process's parent PID)."""
    found = []
    for d in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            if d.isdigit() and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(d))
    return found


def rank_of(pid: int) -> int:
    """The global rank torchrun gave process ``pid`` (its RANK environment variable)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"RANK=")).split(b"=", 1)[1])


def test_killed_rank_is_restarted_and_resumes(tiny_build: Path, weights_file: Path, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed once epoch 2 is under way; torchrun --max-restarts restarts both ranks,
    which resume from last.pt (epoch 1's end). An epoch is 24 steps (about a second, not the
    milliseconds of 2 steps), so that the kill lands inside epoch 2 even when the reader lags."""
    args = overrides(tiny_build, tmp_path, **{"train.pretrained": weights_file, "train.lr_step": 1,
                                              "cv.fold": None, "train.name": "killed", "train.samples_per_epoch": 96})
    (tmp_path / "cfg.yaml").write_text("seed: 0\n")  # everything else comes as overrides
    proc = procs.start([*procs.SERWILD, "train", "--nproc", "2", "--max-restarts", "1",
                        "--config", str(tmp_path / "cfg.yaml"), *args])
    with procs.session(proc):
        err, reader = procs.lines_until(proc, "epoch 2/2: started", 300)  # rank 0's progress line
        assert any("epoch 2/2: started" in x for x in err), "".join(err)[-3000:]
        (agent,) = children(proc.pid)  # serwild train → torchrun's agent → the ranks
        victim = next(p for p in children(agent) if rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        proc.wait(400)
        reader.join(30)
    stderr = "".join(err)
    assert proc.returncode == 0, stderr[-3000:]
    # The first attempt started fresh (no last.pt); only the restarted ranks resume, after epoch 1.
    assert "resuming" in stderr and "after epoch 1" in stderr, stderr[-3000:]
    run = tmp_path / "killed"
    lines = _metrics(run)
    assert [r["epoch"] for r in lines] == [1, 2]  # epoch 2 redone once, epoch 1 not repeated
    assert lines[1]["lr"] == pytest.approx(_lrs(2)) and lines[1]["batches_per_rank"] == [24, 24]
    assert load_checkpoint(run / "last.pt").epoch == 2 and (run / "best.pt").is_file()


def test_one_or_three_shards_for_two_ranks_do_not_hang(tiny_build: Path, manifest: Manifest, tmp_path: Path) -> None:
    records = [s for s in manifest.shards if s.split == "train" and s.condition == "clean"]
    odd = sorted(records, key=lambda s: (s.count % 2 == 0, s.path))  # odd counts first
    cases = {"1": odd[:1], "3": odd[:3]}
    spec = {"batches": 5, "cases": {k: {"urls": [str(tiny_build / r.path) for r in v],
                                        "counts": [r.count for r in v]} for k, v in cases.items()}}
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
            with tarfile.open(tiny_build / r.path) as tf:
                expected += sorted({m.name.split(".", 1)[0] for m in tf if m.isfile()})
        assert sorted(keys) == sorted(expected)  # every sample exactly once over the two ranks
    assert result["1"]["eval_keys"][1] == []  # the rank without a shard read nothing, and returned
