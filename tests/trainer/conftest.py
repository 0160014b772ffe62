"""The trainer's fixtures: the shared tiny build (tests/conftest.py), weights files to
fine-tune from, and helpers to run the trainer under torchrun.

Runs train ``train.arch=tiny`` (AlexNet's layers, names and module paths at small widths, so
a step takes milliseconds and a checkpoint under 1 MB) unless a test is about AlexNet itself:
pass ``**{"train.arch": "alexnet"}`` and a weights file of that architecture
(``alexnet_weights_file``). Batches of 2-4 and 1-2 steps per epoch keep runs short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serwild.config import Config, load_config
from serwild.data.manifest import Manifest
from serwild.trainer.model import new_model
from tests.conftest import tiny_build  # noqa: F401 (the root's fixture, importable from here as before)

TORCHRUN_TIMEOUT_S = 300  # a hang fails the test instead of stalling the suite
ARCH = "tiny"  # what test runs train (overrides' default)


@pytest.fixture(scope="session")
def manifest(tiny_manifest: Manifest) -> Manifest:  # the root's fixture, under the trainer tests' name
    return tiny_manifest


def weights(path: Path, arch: str) -> Path:
    """A 1000-class ``arch`` state_dict standing in for ImageNet weights (pretrained=<path>)."""
    torch.manual_seed(123)
    torch.save(new_model(arch, 1000).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the tiny model (what ``overrides`` trains): train.pretrained=<this file>."""
    return weights(tmp_path_factory.mktemp("weights") / "tiny.pth", ARCH)


@pytest.fixture(scope="session")
def alexnet_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the paper's AlexNet (233 MB), for the tests about AlexNet itself."""
    return weights(tmp_path_factory.mktemp("weights") / "alexnet.pth", "alexnet")


def overrides(build: Path, run_dir: Path, **extra: object) -> list[str]:
    """key=value overrides for a tiny run (paper recipe would need pretrained=<file>)."""
    base = {"out": build, "train.run_dir": run_dir, "train.arch": ARCH, "train.pretrained": "none",
            "train.batch_size": 4, "train.samples_per_epoch": 8, "train.epochs": 2, "train.num_workers": 0,
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
