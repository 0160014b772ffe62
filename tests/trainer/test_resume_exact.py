"""Mid-epoch checkpoints: a run SIGKILLed in the middle of an epoch and resumed ends with
weights bit-identical to an uninterrupted run (CPU, same seed), streaming and from the feature
cache, at 1 and 2 ranks; a resume with another global batch is refused in one line. Two ranks
run as users run them (``serwild train --nproc 2``: torchrun and its ranks); one rank runs the
trainer module itself, as ``python -m serwild.trainer`` (the same ``main``, without torchrun's
agent around it), the killed run as a process of its own and the others in this process. With another
world size (and the same global batch) the epoch's remaining global batches are regrouped over
the new ranks: each is the old world's, sample for sample."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from serwild.cli import main as cli
from serwild.processes.distributed import Dist
from serwild.processes.torchrun import USAGE_EXIT
from serwild.trainer import sources
from serwild.trainer.__main__ import main as rank_main
from serwild.trainer.preflight import plan_data, resolve
from tests.faults import procs
from tests.trainer.conftest import overrides, tiny_config

pytestmark = pytest.mark.slow

# The kill comes right after this save, with 6 of epoch 2's 12 steps and its validation still to run
# (milliseconds each on the tiny model: room for the kill to land first even under load).
MARK = "checkpoint: epoch 2 batch 6/"


def _settings(name: str, extra: dict) -> dict:
    return {"train.name": name, "train.epochs": 2, "train.samples_per_epoch": 48, "train.batch_size": 4,
            "train.checkpoint_every": 6, "cv.fold": 0, **extra}


def _train(build: Path, runs: Path, name: str, nproc: int, extra: dict, *flags: str) -> list[str]:
    """``serwild train`` at 2 ranks; the trainer module's own arguments at 1 (see the docstring above)."""
    args = [*flags, *overrides(build, runs, **_settings(name, extra))]
    return ["train", "--nproc", str(nproc), *args] if nproc > 1 else args


@pytest.fixture
def run(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], str]:
    """``_train``'s command with this process as the launcher (torchrun and the ranks are processes
    of their own, as always) or as the one rank: it must succeed; what it and the ranks said. One
    thread per rank, as in the killed runs' processes (the thread count may change a float's last bit)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def run(argv: list[str]) -> str:
        capfd.readouterr()
        code = cli(argv) if argv[0] == "train" else rank_main(argv)
        err = capfd.readouterr().err
        assert code == 0, err[-3000:]
        return err
    return run


def _killed_after_mark(cmd: list[str], needle: str) -> str:
    """Run ``cmd`` until rank 0 reports the mid-epoch save, then SIGKILL every process of it (the
    launcher, torchrun and the ranks, found by ``needle`` in their command lines) at once."""
    proc = procs.start([*procs.SERWILD, *cmd] if cmd[0] == "train" else [sys.executable, "-m", "serwild.trainer", *cmd])
    with procs.session(proc):
        err, reader = procs.lines_until(proc, MARK, 300)
        assert any(MARK in line for line in err), "".join(err)[-3000:]
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
                                                         run: Callable[[list[str]], str],
                                                         capfd: pytest.CaptureFixture[str], nproc: int,
                                                         extra: dict) -> None:
    extra = {k: (weights_file if v == "WEIGHTS" else v) for k, v in extra.items()}
    if "train.feature_cache" in extra:  # its own cache folder: the session's build stays read-only
        extra["train.feature_cache_dir"] = tmp_path / "cache"
    runs = tmp_path / "runs"
    run(_train(tiny_build, runs, "whole", nproc, extra))
    err = _killed_after_mark(_train(tiny_build, runs, "killed", nproc, extra), str(runs))
    assert "epoch 2/2  loss" not in err  # killed inside epoch 2, before its end-of-epoch line
    ck = torch.load(runs / "killed" / "last.pt", map_location="cpu", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 6)
    if nproc == 2:  # another global batch (8, not 4) cannot continue that epoch exactly: one line, nothing trained
        before = (runs / "killed" / "last.pt").read_bytes()
        # One rank in this process (the refusal is the rank's: it needs the world size), as torchrun runs it.
        other = _settings("killed", {**extra, "train.batch_size": 8})
        code = rank_main(["--resume", *overrides(tiny_build, runs, **other)])
        said = procs.lines(capfd.readouterr().err)
        assert code == USAGE_EXIT and len(said) == 1 and "cannot continue that epoch exactly" in said[0], said
        assert (runs / "killed" / "last.pt").read_bytes() == before
    assert "at epoch 2 batch 6" in run(_train(tiny_build, runs, "killed", nproc, extra, "--resume"))
    whole, again = _weights(runs / "whole"), _weights(runs / "killed")
    assert whole.keys() == again.keys()
    assert all(torch.equal(whole[k], again[k]) for k in whole), "weights differ after a mid-epoch resume"
    best = torch.load(runs / "killed" / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best and "rng" not in best  # best.pt is weights only


def test_keep_last_false_leaves_only_the_weights(tiny_build: Path, tmp_path: Path) -> None:
    """One process, no torchrun (``python -m serwild.trainer``), here: a finished run keeps best.pt only."""
    runs = tmp_path / "runs"
    settings = _settings("lean", {"train.keep_last": "false", "train.epochs": 1, "train.checkpoint_every": "null"})
    assert rank_main(overrides(tiny_build, runs, **settings)) == 0
    assert not (runs / "lean" / "last.pt").exists()
    best = torch.load(runs / "lean" / "best.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in best and "rng" not in best and best["epoch"] == 1


def test_another_world_size_continues_the_epoch_on_the_old_worlds_global_batches(tiny_build: Path,
                                                                                 tmp_path: Path) -> None:
    """What a mid-epoch resume with another world size trains, on the real streaming loader: the
    rest of an epoch that 2 ranks of 2 began, at 1 rank of 4 (a node lost) and at 4 ranks of 1
    (more nodes). Batch k over the new ranks, in rank order, is the old ranks' batch k side by side."""
    cfg = resolve(tiny_config(tiny_build, tmp_path, **{"train.samples_per_epoch": 24, "cv.fold": None}))
    plan, steps, first = plan_data(cfg), 6, 2  # 24 samples, a global batch of 4: 6 steps; 2 done

    def batches(rank: int, world: int, streams: tuple[int, int] | None) -> list:
        d = Dist(rank=rank, world_size=world)
        data = sources.ShardData(plan, cfg, d, steps, 4 // world)
        return list(sources.epoch_batches(data, d, 4 // world, 1, first, streams))

    old = [batches(r, 2, None) for r in range(2)]
    assert [len(b) for b in old] == [steps - first] * 2 and old[0][0][0].shape[0] == 2
    for world in (1, 4):
        new = [batches(r, world, (2, 2)) for r in range(world)]
        for k in range(steps - first):
            for column in (0, 1):  # images, labels
                regrouped = torch.cat([n[k][column] for n in new])
                assert torch.equal(regrouped, torch.cat([old[0][k][column], old[1][k][column]])), (world, k)
