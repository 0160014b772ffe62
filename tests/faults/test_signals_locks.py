"""Signals and locks (issue 8, hardening part): real processes, real faults.

SIGTERM (a scheduler's preemption) is sent with os.kill to the PID the test started; a lock
is held by a real second process, and a holder is really killed with SIGKILL. Each case
checks the exit status, the one-line message (no traceback), and the files left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serwild.cli import main
from serwild.processes import atomic, lock, raystart
from serwild.processes.checkpoint import load_checkpoint
from serwild.trainer.preflight import prepare_run_dir
from tests.builder.conftest import make_noise, make_tree
from tests.faults import procs
from tests.faults.procs import SERWILD, dead_pid, hold_lock, lines, session, start, wait_for
from tests.trainer.conftest import overrides

SIGTERM_EXIT = 128 + signal.SIGTERM
HELD_BUILD = [sys.executable, "-m", "tests.faults.held_build"]  # + N: `serwild build` held after N shards


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fault_corpus")
    make_tree(base / "corpus", per_class=1)
    make_noise(base / "noise", seconds=4.0)
    return base


def build_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["corpus.kind=iemocap", f"corpus.root={corpus / 'corpus'}", f"noise.dir={corpus / 'noise'}",
            f"out={out}", "shard.max_samples=8", "snr_db=[15]", "datasets=[ahsn]", "split.folds=2", *extra]


@pytest.fixture(scope="session")
def small_build(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build of ``corpus`` with :func:`build_args` (read-only for tests), by `serwild build --serial`."""
    out = tmp_path_factory.mktemp("fault_build") / "shards"
    assert main(["build", "--serial", *build_args(corpus, out)]) == 0
    return out


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


# ----------------------------------------------------------------------------- locks


def test_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "build"
    holder = hold_lock(folder)
    with session(holder):
        with pytest.raises(lock.LockedError) as e:
            lock.acquire(folder)
        assert str(folder) in str(e.value) and f"PID {holder.pid}" in str(e.value) and "test holder" in str(e.value)
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops its flock; the file still names it
        holder.wait()
        assert lock.holder(folder)[0] == holder.pid
        with lock.locked(folder) as held:
            assert lock.holder(folder)[0] == os.getpid() and held.fd is not None
            with lock.locked(folder):  # the same process again: counted, not refused
                pass
            assert lock.holder(folder)[0] == os.getpid()
        assert lock.holder(folder) == (None, "")  # released: the file stays, empty


def test_a_second_build_is_refused_at_once_and_spares_the_first_builds_temp_files(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first build is a process of its own (it holds the lock, is signalled); the second and
    the resumed one run in-process (their exit status and message are what is checked)."""
    out = tmp_path / "shards"
    args = build_args(corpus, out)
    first = start([*HELD_BUILD, "1", "--serial", *args])  # `serwild build`, stopped after its first shard
    with session(first):
        log = out / "build-log.jsonl"
        wait_for(lambda: log.is_file() and log.read_text().strip() != "", first, 120, "the first shard")
        shard = out / json.loads(log.read_text().splitlines()[0])["path"]
        # The first build's writer at work (its PID is alive) and a killed writer's leftover.
        live_temp = shard.with_name(f".{shard.stem}-x.tar{atomic.TMP_MARK}{first.pid}")
        stale_temp = shard.with_name(f".{shard.stem}-y.tar{atomic.TMP_MARK}{dead_pid()}")
        live_temp.write_bytes(b"half a shard")
        stale_temp.write_bytes(b"half a shard")
        before = shard_bytes(out)

        capsys.readouterr()
        second = main(["build", "--serial", *args])
        procs.one_line(capsys.readouterr().err, second, 2, f"serwild build: error: {out} is in use by PID "
                       f"{first.pid} (serwild build): wait for it to finish or stop it, then try again")
        assert live_temp.read_bytes() == b"half a shard" and stale_temp.exists() and shard_bytes(out) == before

        # SIGTERM stops the first build like Ctrl-C: one line, status 143, the lock released.
        os.kill(first.pid, signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == SIGTERM_EXIT, err[-3000:]
        assert "Traceback" not in err
        assert lines(err)[-1] == "serwild build: stopped by SIGTERM; run the same command again to resume"
        assert not (out / "manifest.json").exists() and lock.holder(out) == (None, "")

    # The next build resumes; now both temps' writers are dead and their files go.
    capsys.readouterr()
    again = main(["build", "--serial", *args])
    err = capsys.readouterr().err
    assert again == 0, err[-3000:]
    assert "resume: 1 shard(s) already built" in err
    assert not live_temp.exists() and not stale_temp.exists()
    assert main(["verify", str(out)]) == 0


def test_a_build_of_another_config_needs_overwrite(small_build: Path, corpus: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    out = tmp_path / "shards"
    shutil.copytree(small_build, out)
    before = shard_bytes(out)
    manifest = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    refused = main(["build", "--serial", *build_args(corpus, out, "seed=1")])  # exit status and message: in-process
    procs.one_line(capsys.readouterr().err, refused, 2, f"serwild build: error: {out} holds a build of another "
                   "config (seed: 0 → 1): pass --overwrite to replace it, or set out=<another folder>")
    assert shard_bytes(out) == before and (out / "manifest.json").read_bytes() == manifest
    # The same config again (another Ray setting) is a resume: no flag needed, nothing rebuilt.
    assert main(["build", "--serial", *build_args(corpus, out, "ray.num_cpus=1")]) == 0
    assert shard_bytes(out) == before
    assert main(["build", "--serial", "--overwrite", *build_args(corpus, out, "seed=1")]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 1
    assert shard_bytes(out) != before


def test_a_second_trainer_on_a_run_folder_is_refused(tiny_build: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "r"
    holder = hold_lock(run)
    with session(holder):
        args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 1})
        capsys.readouterr()
        launcher = main(["train", "--nproc", "1", *args])  # refused before torchrun: in-process
        launcher_err = capsys.readouterr().err
        rank = subprocess.run([sys.executable, "-m", "serwild.trainer", *args], capture_output=True, text=True,
                              env=procs.env(), timeout=300)
    expected = f"{run} is in use by PID {holder.pid} (test holder): wait for it to finish or stop it, then try again"
    procs.one_line(launcher_err, launcher, 2, f"serwild train: error: {expected}")
    assert rank.returncode == 2 and "Traceback" not in rank.stderr, rank.stderr[-3000:]
    assert lines(rank.stderr)[-1] == f"serwild.trainer: error: {expected}"
    assert sorted(p.name for p in run.iterdir()) == [lock.LOCK_NAME]  # nothing written


def test_the_run_folder_loses_only_dead_writers_temp_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sleeper = start([sys.executable, "-c", "import time; time.sleep(600)"])
    with session(sleeper):
        live = run / f".last.pt{atomic.TMP_MARK}{sleeper.pid}"
        dead = run / f".last.pt{atomic.TMP_MARK}{dead_pid()}"
        other = run / "notes.tmp-1"  # not a temp name of ours
        for p in (live, dead, other):
            p.write_bytes(b"x" * 1000)
        try:
            assert prepare_run_dir(run, resume=True, overwrite=False) is None
            assert live.exists() and not dead.exists() and other.exists()
        finally:
            lock.release(run)


# ----------------------------------------------------------------------------- signals: trainer


@pytest.mark.slow
def test_sigterm_stops_training_and_resume_finishes(tiny_build: Path, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """SIGTERM to `serwild train` mid-epoch-2: torchrun and the rank stop, status 143 and one
    line; last.pt (epoch 1) stays loadable and --resume finishes the run. An epoch is 120 steps
    of the tiny model (a second or more), so SIGTERM, sent once rank 0 says epoch 2 started
    (after epoch 1's last.pt), lands inside epoch 2."""
    args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 2,
                                                       "train.batch_size": 2, "train.samples_per_epoch": 240})
    run = tmp_path / "runs" / "r"
    proc = start([*SERWILD, "train", "--nproc", "1", *args])
    with session(proc):
        said, reader = procs.lines_until(proc, "epoch 2/2: started", 400)
        assert any("epoch 2/2: started" in x for x in said), "".join(said)[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(120)
        reader.join(30)
        err = "".join(said)
        assert proc.returncode == SIGTERM_EXIT, err[-3000:]
        assert lines(err)[-1] == "serwild train: stopped by SIGTERM; continue with --resume"
        assert "Traceback" not in err, err[-3000:]  # torchrun's SignalException included
        assert procs.wait_session_gone(proc.pid, 20) == [], "torchrun outlived serwild train"
        left = procs.wait_gone(str(tmp_path), 20)  # ranks run in sessions of their own
        assert left == [], procs.describe(left)
    assert "epoch 2/2: started" in err and "epoch 2/2  loss" not in err  # stopped inside epoch 2, before its end
    # the budget, said early: the rate over the first steps and the run's cost, then a run ETA per epoch
    assert re.search(r"\d\d:\d\d serwild train: budget: [\d.]+ images/s measured over steps 2-10; this run "
                     r"trains 240 steps × 2 images: about \S+ of training left \(validation not counted\), done "
                     r"around \d\d:\d\d", err), err[-3000:]
    assert re.search(r"\d\d:\d\d serwild train: epoch 1/2  loss .*; run ETA \S+ \(about \d\d:\d\d\)", err), err
    assert load_checkpoint(run / "last.pt").epoch == 1
    assert lock.holder(run) == (None, "")
    capfd.readouterr()
    resumed = main(["train", "--nproc", "1", "--resume", *args])  # in-process launcher; capfd: the rank's output too
    err = capfd.readouterr().err
    assert resumed == 0, err[-3000:]
    assert "after epoch 1" in err
    assert re.search(r"serwild train: budget: .* this run trains 120 steps × 2 images", err)  # what is left
    assert re.search(r"serwild train: epoch 2/2  loss .*; run done", err), err[-3000:]
    assert load_checkpoint(run / "last.pt").epoch == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not [p for p in run.iterdir() if atomic.TMP_MARK in p.name]


# ----------------------------------------------------------------------------- signals: Ray build


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_ray_build_leaves_no_ray_process(corpus: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM: one line, 143, ray.shutdown ran (no stack dump), every Ray process gone at once.
    SIGKILL of the driver alone (not its group): its GCS, raylet and workers end with it; what
    is left is Ray's two agents, orphaned and on their way out (Ray's process watcher publishes
    the raylet's death to the dead GCS with a fixed 60 s timeout, then exits: Ray's code, not
    waited for here); and the next local Ray removes the session folder the dead driver could not."""
    out = tmp_path / "shards"
    proc = start([*HELD_BUILD, "1", *build_args(corpus, out, "ray.num_cpus=1")])
    with session(proc):
        log = out / "build-log.jsonl"
        wait_for(lambda: log.is_file() and log.read_text().strip() != "", proc, 180, "the first shard")
        assert len(procs.session_pids(proc.pid)) > 1  # gcs, raylet, workers… of this driver
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        left = procs.wait_session_gone(proc.pid, 20, but=RAY_AGENTS if sig == signal.SIGKILL else ())
        assert left == [], (f"{len(left)} Ray processes outlived the driver by {time.monotonic() - t0:.0f} s:\n"
                            + "\n".join(procs.describe(left)))
    if sig == signal.SIGTERM:
        assert proc.returncode == SIGTERM_EXIT, err[-3000:]
        assert "Traceback" not in err and "Stack trace" not in err and "*** SIG" not in err, err[-3000:]
        assert lines(err)[-1] == "serwild build: stopped by SIGTERM; run the same command again to resume"
    else:
        assert proc.returncode == -signal.SIGKILL
        # The dead driver's session folder (in the build folder, or /tmp/serwild-ray-<pid>-* where
        # the build folder's path is too long) is the next local Ray's to remove: as the next build does.
        leftover = [*out.glob(".ray-*"), *Path("/tmp").glob(f"{raystart.ELSEWHERE}{proc.pid}-*")]
        assert leftover, "the killed driver's session folder was not where it is looked for"
        fresh = raystart.session_folder(out)
        assert fresh is not None and not [p for p in leftover if p.exists()]
        shutil.rmtree(fresh)
    assert lock.holder(out) == (None, "") or sig == signal.SIGKILL
    with lock.locked(out):  # free either way: a killed holder's lock is the kernel's to drop
        pass


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # orphans that end in Ray's own 60 s


@pytest.mark.slow
def test_sigterm_to_a_two_rank_evaluation_with_loader_workers(tmp_path: Path) -> None:
    """SIGTERM to `serwild evaluate --nproc 2` while its ranks score with two loader workers each:
    it used to wait 30 s for torchrun to SIGKILL a rank stuck in a collective or its workers'
    shutdown, print 76 lines, and leave multiprocessing's pymp-* folders in the temp folder. Now:
    143 within seconds, one line, no process and no temp folder left, no report."""
    from tests.evaluate.conftest import write_build, write_checkpoint

    build = write_build(tmp_path / "shards", {"clean": (None, [300, 300]), "snr15": (15.0, [300])})
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", build)
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = start([*SERWILD, "evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "rep"), "--nproc", "2",
                  "eval.num_workers=2", "eval.batch_size=1", "eval.device=cpu", "eval.bootstrap=0"],
                 TMPDIR=str(temp))
    with session(proc):
        said, reader = procs.lines_until(proc, "evaluate clean: started", 300)
        assert proc.poll() is None, "".join(said)[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        start_s = time.monotonic()
        proc.wait(60)
        took = time.monotonic() - start_s
        reader.join(30)
        err = "".join(said)
        assert proc.returncode == SIGTERM_EXIT and took < 15, (took, err[-3000:])
        assert lines(err)[-1] == "serwild evaluate: stopped by SIGTERM", err[-3000:]
        assert "Traceback" not in err and "death signal" not in err, err[-3000:]
        assert procs.wait_gone(str(tmp_path / "rep"), 20) == []
    assert not (tmp_path / "rep" / "metrics.json").exists()
    deadline = time.monotonic() + 20  # loader workers notice their rank is gone within a few seconds
    while list(temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(temp.iterdir()) == []
