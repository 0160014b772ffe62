"""Mid-epoch checkpoints: a run SIGKILLed in the middle of an epoch and resumed ends with
weights bit-identical to an uninterrupted run (CPU, same seed), streaming at 2 ranks and
from the feature cache at 1 rank; a resume with another world size is refused in one line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.faults import procs
from tests.trainer.conftest import overrides

pytestmark = pytest.mark.slow

MARK = "checkpoint: epoch 2 batch 2/"  # the kill comes right after this save


def _train(build: Path, runs: Path, name: str, nproc: int, extra: dict, *flags: str) -> list[str]:
    over = overrides(build, runs, **{"train.name": name, "train.epochs": 2, "train.samples_per_epoch": 16,
                                     "train.batch_size": 4, "train.checkpoint_every": 2, "cv.fold": 0, **extra})
    return [*procs.SERWILD, "train", "--nproc", str(nproc), *flags, *over]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=procs.REPO, env=procs.env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _killed_after_mark(cmd: list[str], needle: str) -> str:
    """Run ``cmd`` until rank 0 reports the mid-epoch save, then SIGKILL every process of it (the
    launcher, torchrun and the ranks, found by ``needle`` in their command lines) at once."""
    proc = procs.start(cmd)
    err: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if MARK in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with procs.session(proc):
        deadline = time.monotonic() + 300
        while not seen.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert seen.is_set(), "".join(err)[-3000:]
        for pid in {*procs.session_pids(proc.pid), *procs.pids_running(needle)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)
        assert not procs.wait_gone(needle, 30)
    reader.join(10)
    return "".join(err)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


CACHED = {"train.recipe": "paper", "train.feature_cache": "on", "train.pretrained": "WEIGHTS"}


@pytest.mark.parametrize(("nproc", "extra"), [
    (2, {}),  # streaming shards, the scratch recipe, dropout on every rank
    (1, {}),
    (2, CACHED),  # the paper's recipe from the feature cache
    (1, CACHED),
], ids=["streaming-2-ranks", "streaming-1-rank", "cached-2-ranks", "cached-1-rank"])
def test_a_sigkill_mid_epoch_resumes_to_identical_weights(tiny_build: Path, weights_file: Path, tmp_path: Path,
                                                         nproc: int, extra: dict) -> None:
    extra = {k: (weights_file if v == "WEIGHTS" else v) for k, v in extra.items()}
    if "train.feature_cache" in extra:  # its own cache folder: the session's build stays read-only
        extra["train.feature_cache_dir"] = tmp_path / "cache"
    runs = tmp_path / "runs"
    _run(_train(tiny_build, runs, "whole", nproc, extra))
    err = _killed_after_mark(_train(tiny_build, runs, "killed", nproc, extra), str(runs))
    assert "epoch 2/2  loss" not in err  # killed inside epoch 2, before its end-of-epoch line
    ck = torch.load(runs / "killed" / "last.pt", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 2)
    if nproc == 2:  # another world size cannot continue that epoch exactly: one line, nothing trained
        other = subprocess.run(_train(tiny_build, runs, "killed", 1, extra, "--resume"), capture_output=True,
                               text=True, cwd=procs.REPO, env=procs.env(), timeout=300)
        said = procs.lines(other.stderr)
        assert other.returncode != 0 and "Traceback" not in other.stderr, other.stderr[-3000:]
        assert any("cannot continue that epoch exactly" in x for x in said), other.stderr[-3000:]
    resumed = _run(_train(tiny_build, runs, "killed", nproc, extra, "--resume"))
    assert "at epoch 2 batch 2" in resumed.stderr
    whole, again = _weights(runs / "whole"), _weights(runs / "killed")
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole), "weights differ after a mid-epoch resume"
    best = torch.load(runs / "killed" / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best and "rng" not in best  # best.pt is weights only


def test_keep_last_false_leaves_only_the_weights(tiny_build: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(_train(tiny_build, runs, "lean", 1, {"train.keep_last": "false", "train.epochs": 1,
                                             "train.checkpoint_every": "null"}))
    assert not (runs / "lean" / "last.pt").exists()
    best = torch.load(runs / "lean" / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best and best["epoch"] == 1
    assert (runs / "lean" / "best.pt").stat().st_size < 0.25e9  # AlexNet's 57 M weights, no optimiser state
