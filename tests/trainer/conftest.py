"""Shared fixtures: one tiny build (synthetic corpus → shards, no Ray) for the whole session,
an AlexNet weights file to fine-tune from, and helpers to run the trainer under torchrun.

The build has 5 folds, conditions clean + snr15 and at most 12 samples per shard, so one
fold's validation set is ~2 shards and the 2-rank tests see odd shard and sample counts.
AlexNet on two shared CPU cores is slow: runs use batches of 2-4 and 1-2 steps per epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serwild.builder.build import run_build
from serwild.config import Config, load_config
from serwild.synth.corpus import write_synthetic_corpus
from serwild.trainer.model import build_model

TORCHRUN_TIMEOUT_S = 300  # a hang fails the test instead of stalling the suite


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build folder (read-only for tests: copy before damaging anything)."""
    root = tmp_path_factory.mktemp("trainer_build")
    write_synthetic_corpus(root / "corpus", size="tiny", seed=0)
    cfg = load_config(None, ["corpus.kind=synthetic", f"corpus.root={root / 'corpus'}",
                             f"noise.dir={root / 'corpus' / 'noise'}", f"out={root / 'shards'}",
                             "datasets=[ahsn]", "snr_db=[15]", "split.folds=5", "shard.max_samples=12"])
    return run_build(cfg, executor="serial")


@pytest.fixture(scope="session")
def manifest(tiny_build: Path) -> dict:
    return json.loads((tiny_build / "manifest.json").read_text())


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class AlexNet state_dict standing in for ImageNet weights (pretrained=<path>)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(build_model(1000, "none").state_dict(), path)
    return path


def overrides(build: Path, run_dir: Path, **extra: object) -> list[str]:
    """key=value overrides for a tiny run (paper recipe would need pretrained=<file>)."""
    base = {"out": build, "train.run_dir": run_dir, "train.pretrained": "none", "train.batch_size": 4,
            "train.samples_per_epoch": 8, "train.epochs": 2, "train.num_workers": 0,
            "train.shuffle_buffer": 20, "train.timeout_s": 120}
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def tiny_config(build: Path, run_dir: Path, **extra: object) -> Config:
    return load_config(None, overrides(build, run_dir, **extra))


def torchrun(args: list[str], nproc: int = 2, max_restarts: int = 0, env: dict | None = None,
             timeout: int = TORCHRUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N <args>`` as a subprocess, output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--log-dir=/dev/null",
           f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
