"""Broken checkpoints and full disks (issue 8, hardening part): real files, a real full disk.

A 0-byte last.pt, a cut one and pickles whose ``__reduce__`` would run a shell command must
each be one line naming the file (never torch's advice to retry with weights_only=False, and
the command never runs). A build or a checkpoint that runs out of space (a real tmpfs of a
few hundred KB, mounted here and unmounted afterwards; a file size limit where
mounting is not allowed) ends with one line naming the file it was writing, and leaves no
temp file behind.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from serwild import errors
from serwild.cli import main
from serwild.errors import UsageError
from serwild.processes import atomic
from serwild.processes.checkpoint import load_checkpoint
from tests.faults import procs
from tests.faults.procs import SERWILD, full_disk, lines
from tests.faults.test_signals_locks import build_args, corpus  # noqa: F401 (fixtures)
from tests.trainer.conftest import overrides

ADVICE = ("weights_only=False", "weights_only` set to `False", "will likely succeed", "trusted source")


class Evil:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_and_cut_checkpoints_are_refused_unrun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Evil(marker)))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": Evil(marker), "epoch": 1}, wrapped)  # a zip checkpoint with a payload inside
    cut = tmp_path / "cut.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, cut)
    cut.write_bytes(cut.read_bytes()[:700])
    for path in (raw, wrapped, cut):
        with pytest.raises(UsageError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert msg.startswith(f"{path} is not a serwild checkpoint (") and "\n" not in msg, msg
        assert not any(a in msg for a in ADVICE), msg
    assert not marker.exists()
    # The same through the CLI: one line, status 2, nothing run.
    wav = tmp_path / "x.wav"
    wav.write_bytes(b"")
    capsys.readouterr()
    rc = main(["predict", "--checkpoint", str(wrapped), str(wav)])
    line = procs.one_line(capsys.readouterr().err, rc, 2)
    assert line.startswith(f"serwild predict: error: {wrapped} is not a serwild checkpoint (it holds objects other "
                           "than tensors and plain data; refused without running them"), line
    assert not any(a in line for a in ADVICE) and not marker.exists()


def test_an_empty_last_pt_is_one_line_on_resume(tiny_build: Path, tmp_path: Path) -> None:
    """What a node that died while the file system was full leaves: a 0-byte last.pt."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None})
    proc = subprocess.run([sys.executable, "-m", "serwild.trainer", "--resume", *args], capture_output=True,
                          text=True, env=procs.env(), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines(proc.stderr)[-1] == (f"serwild.trainer: error: {run}/last.pt is not a serwild checkpoint "
                                      "(the file is empty)")
    assert (run / "last.pt").read_bytes() == b""  # left for the user to look at


def _no_temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if atomic.TMP_MARK in p.name]


def test_a_full_disk_build_is_one_line(corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    """A serial build. With Ray (the shard's writer is a Ray worker: its error comes wrapped) it is
    tests/faults/test_building.py's full-disk Ray build, several workers writing at once."""
    with full_disk(tmp_path / "disk", "200k") as (disk, limit):
        out = disk / "shards"
        proc = subprocess.run([*SERWILD, "build", "--serial", *build_args(corpus, out)], capture_output=True,
                              text=True, env=procs.env(), timeout=300, preexec_fn=limit)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = lines(proc.stderr)
        assert re.fullmatch(rf"serwild build: error: no space left on device writing {re.escape(str(out))}/"
                            r"ahsn/\S+\.tar", line), line
        assert _no_temps(out) == [] and not (out / "manifest.json").exists()


def test_a_full_log_names_its_file() -> None:
    """The build log grows in place (not an atomic write): the kernel's ENOSPC on a write names no
    file, so a full disk met there was "(a file it did not name)" (the Ray build's CLI line, when
    the driver's log line came after the workers had filled the disk). /dev/full: every write fails so."""
    with pytest.raises(errors.DiskFullError) as e:
        atomic.append_line("/dev/full", '{"shard": 1}')
    assert e.value.filename == "/dev/full" and errors.disk_full_path(e.value) == "/dev/full"


@pytest.mark.slow
def test_a_full_disk_checkpoint_is_one_line(tiny_build: Path, tmp_path: Path) -> None:
    """Two ranks under torchrun; rank 0 writes last.pt (the tiny model's weights and Adam's two
    moments: ~0.65 MB) onto a 256 KB file system, where config.yaml and metrics.jsonl fit. It was
    warned of at the start; the rank says so in one line and torchrun adds no failure report."""
    with full_disk(tmp_path / "disk", "256k") as (disk, limit):
        args = overrides(tiny_build, disk / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 1,
                                                        "train.batch_size": 2, "train.samples_per_epoch": 4})
        proc = subprocess.run([*SERWILD, "train", "--nproc", "2", *args], capture_output=True, text=True,
                              env=procs.env(), timeout=400, preexec_fn=limit)
        run = disk / "runs" / "r"
        assert proc.returncode == 1, proc.stderr[-3000:]
        for noise in ("Traceback", "ChildFailedError", "Root Cause", "training failed"):
            assert noise not in proc.stderr, proc.stderr[-3000:]
        if limit is None:  # a real small file system (not a file size limit): warned before it ran
            assert re.search(rf"note: {re.escape(str(run))} has 0\.00 GB free; a checkpoint of this model is "
                             r"about 0\.00 GB and saving one needs room for three", proc.stderr), proc.stderr[-3000:]
        said = [x for x in lines(proc.stderr) if "no space left" in x]
        assert said == [f"serwild.trainer: error: no space left on device writing {run}/last.pt"], proc.stderr
        assert _no_temps(run) == [] and not (run / "last.pt").exists()
        assert (run / "config.yaml").is_file()  # what fitted is whole


# ----------------------------------------------------------------------------- the best.pt / last.pt window


def _blocked_on_fifo(pid: int) -> bool:
    """The process sleeps in open() of a FIFO no one reads (the kernel's wait_for_partner)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip() == "wait_for_partner"
    except OSError:
        return False


def _train_held_at(run: Path, fifo: str, args: list[str], when: Callable[[subprocess.Popen], bool] | None = None
                   ) -> None:
    """One rank (the trainer module itself, so its PID is known) whose write of ``fifo``'s checkpoint
    (``.last.pt`` or ``.best.pt``) blocks on a FIFO at its temp name, then SIGKILLed there: a real
    kill in the window between the two checkpoint writes. ``when``: make the FIFO once it holds (the
    process then exists), else before the process starts (``exec`` keeps the shell's PID)."""
    run.mkdir(parents=True)
    cmd = [sys.executable, "-m", "serwild.trainer", "--resume", *args]
    shell = f'mkfifo "{run}/.{fifo}.tmp-$$" && exec "$@"'
    proc = procs.start(cmd if when else ["sh", "-c", shell, "sh", *cmd])
    with procs.session(proc):
        if when is not None:
            procs.wait_for(lambda: when(proc), proc, 300, f"the moment to hold {fifo}")
            os.mkfifo(run / f".{fifo}.tmp-{proc.pid}")
        procs.wait_for(lambda: _blocked_on_fifo(proc.pid), proc, 300, f"the write of {fifo} to block")
        proc.kill()
        proc.wait(30)
    (run / f".{fifo}.tmp-{proc.pid}").unlink()


def _resume(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", "serwild.trainer", "--resume", *args], capture_output=True,
                          text=True, env=procs.env(), timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return lines(done.stderr)[-1]


@pytest.mark.slow
def test_a_kill_before_best_pt_is_written_never_loses_the_best_model(tiny_build: Path, tmp_path: Path) -> None:
    """Epoch 1 always improves on nothing, so its end writes best.pt; killed while that write
    blocks, a resume must end with the best model on disk (it once found last.pt saying "best at
    epoch 1", had nothing left to train, and ended with no best.pt)."""
    run = tmp_path / "runs" / "r"
    args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": 0, "train.epochs": 1})
    _train_held_at(run, "best.pt", args)
    assert not (run / "best.pt").exists()
    line = _resume(args)
    epoch = int(re.fullmatch(r".*done: \S+/best\.pt \(best \S+ \S+ at epoch (\d+)\)", line)[1])  # type: ignore[index]
    best = load_checkpoint(run / "best.pt")
    assert best.epoch == best.best["epoch"] == epoch == 1


@pytest.mark.slow
def test_a_kill_between_best_pt_and_last_pt_leaves_best_pt_of_its_epoch(tiny_build_without_validation: Path,
                                                                        tmp_path: Path) -> None:
    """No validation part: every epoch's end writes best.pt (the latest model), then last.pt. Killed
    between the two at epoch 2, best.pt already holds epoch 2 and last.pt epoch 1; the resumed run
    trains epoch 2 again and ends with best.pt of epoch 2 (it once ended with epoch 1's under the
    name of the last epoch's model)."""
    run = tmp_path / "runs" / "r"
    args = overrides(tiny_build_without_validation, tmp_path / "runs", **{
        "train.name": "r", "cv.fold": None, "train.epochs": 2, "train.samples_per_epoch": 400})

    def epoch_one_saved(_: subprocess.Popen) -> bool:
        return (run / "last.pt").is_file()

    _train_held_at(run, "last.pt", args, when=epoch_one_saved)
    assert load_checkpoint(run / "best.pt").epoch == 2 and load_checkpoint(run / "last.pt").epoch == 1
    assert _resume(args).endswith("best.pt (no validation part: the last epoch's model)")
    assert load_checkpoint(run / "best.pt").epoch == 2
