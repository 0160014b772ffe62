"""Training faults (issue 8, training part): real cache files, real read-only mounts, real signals.

Feature-cache files are swapped, cut, emptied and replaced by a pickle that would run a
shell command; a run folder sits on a real read-only file system (a tmpfs mounted ``ro``);
torchrun's agent and a rank are really killed with SIGKILL; a learning rate of 1e30 really
drives the loss to infinity. Each case checks the exit status, the one line a user reads (no
traceback, no torchrun failure report) and what is left on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serwild.builder.labels import PRESETS
from serwild.cli import main
from serwild.data.manifest import Manifest, load_manifest
from serwild.data.records import ShardRecord
from serwild.errors import UsageError
from serwild.trainer.features import cache_records, cache_spec, load_feature_cache, shard_cache_file, tar_keys
from serwild.trainer.features_write import build_feature_cache
from serwild.trainer.model import build_model
from tests.faults import procs
from tests.faults.procs import SERWILD, lines, session, start, wait_for
from tests.faults.test_checkpoints_disk import ADVICE, Evil
from tests.trainer.conftest import ARCH, overrides, tiny_build, weights_file  # noqa: F401 (fixtures)

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order

CPU = torch.device("cpu")
FROZEN = "[conv1,conv2,conv3,conv4]"  # the paper's frozen prefix: the feature cache is on
REPORT = ("Traceback", "ChildFailedError", "Root Cause", "FAILED")  # torchrun's failure report


def _manifest(build: Path) -> Manifest:
    return load_manifest(build)


def _cache(build: Path, root: Path, records: list[ShardRecord]):
    """A real feature cache of ``records`` (the tiny model's conv1-conv4, random weights) under ``root``."""
    manifest = _manifest(build)
    torch.manual_seed(0)
    model = build_model(len(manifest.classes("ahsn")), "none", ARCH)
    spec = cache_spec(root, manifest.fingerprint, model, 10)
    done = build_feature_cache(build, records, model, CPU, spec, manifest.classes("ahsn"))
    assert done.written == len(records)
    return model, spec


def _same_count_pair(build: Path) -> list[ShardRecord]:
    """Two training shards holding the same number of samples (of two folds where the build has them)."""
    recs = cache_records(_manifest(build), "ahsn")
    pairs = [[a, b] for a in recs for b in recs if a.path < b.path and a.count == b.count > 0]
    for a, b in sorted(pairs, key=lambda p: p[0].fold == p[1].fold):
        return [a, b]
    raise AssertionError("the build has no two training shards of equal size")


def _one_line(msg: str) -> None:
    assert "\n" not in msg and not any(a in msg for a in ADVICE), msg


def _run_lines(err: str) -> list[str]:
    """stderr lines as a user reads them, without the launcher's echo of the torchrun command."""
    return [x for x in lines(err) if not x.startswith("+ ")]


# ----------------------------------------------------------------------------- the feature cache


def test_swapped_or_stale_cache_files_are_refused_on_load_and_rebuilt(tiny_build: Path,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """Two equal-sized cache files swapped (one of them a validation fold's) used to train on the
    wrong fold with exit 0. Each file names its shard, the shard's sha256 and sample keys."""
    pair = _same_count_pair(tiny_build)
    model, spec = _cache(tiny_build, tmp_path / "cache", pair)
    fa, fb = (shard_cache_file(spec.dir, r) for r in pair)
    a, b = fa.read_bytes(), fb.read_bytes()
    fa.write_bytes(b)
    fb.write_bytes(a)
    with pytest.raises(UsageError) as e:
        load_feature_cache(spec, pair)
    _one_line(str(e.value))
    assert str(fa) in str(e.value) and pair[1].path in str(e.value), e.value
    # A shard rebuilt under the same name (another sha256) makes its cache file stale too.
    fa.write_bytes(a)
    fb.write_bytes(b)
    with pytest.raises(UsageError, match="sha256"):
        load_feature_cache(spec, [dataclasses.replace(pair[0], sha256="0" * 64)])
    # Keys that are not the shard's (same shard name and sha256) are caught against the tar.
    obj = torch.load(fa, weights_only=True)
    obj["keys"] = obj["keys"][::-1]
    torch.save(obj, fa)
    with pytest.raises(UsageError, match="keys"):
        load_feature_cache(spec, pair, build_dir=tiny_build)
    # The next build of the cache finds both stale files (swapped again), says so and rebuilds them.
    fa.write_bytes(b)
    fb.write_bytes(a)
    manifest = _manifest(tiny_build)
    again = build_feature_cache(tiny_build, pair, model, CPU, spec, manifest.classes("ahsn"))
    assert again.written == 2 and len(again.notes) == 2, again
    assert all(n.startswith("note: feature cache file ") and "rebuilt" in n for n in again.notes), again.notes
    data = load_feature_cache(spec, pair, build_dir=tiny_build)
    assert data.keys == [k for r in pair for k in tar_keys(tiny_build / r.path)]
    assert fa.read_bytes() != b


def test_cut_and_empty_cache_files_are_rebuilt_and_a_hostile_one_is_refused_unrun(tiny_build: Path,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    recs = [r for r in cache_records(_manifest(tiny_build), "ahsn") if r.count > 0][:3]
    model, spec = _cache(tiny_build, tmp_path / "cache", recs)
    empty, cut, hostile = (shard_cache_file(spec.dir, r) for r in recs)
    whole = {f: f.read_bytes() for f in (empty, cut)}
    empty.write_bytes(b"")
    cut.write_bytes(whole[cut][: len(whole[cut]) // 2])
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "features": Evil(marker)}, hostile)
    for f in (empty, cut, hostile):  # loading: one line naming the file, never torch's advice
        with pytest.raises(UsageError) as e:
            load_feature_cache(spec, [recs[[empty, cut, hostile].index(f)]])
        _one_line(str(e.value))
        assert str(f) in str(e.value), e.value
    assert not marker.exists()
    # Building: a hostile file is refused (left for the user to look at) without running it…
    with pytest.raises(UsageError) as e:
        build_feature_cache(tiny_build, recs, model, CPU, spec, CLASSES)
    _one_line(str(e.value))
    assert str(hostile) in str(e.value) and "refused without running" in str(e.value), e.value
    assert not marker.exists() and hostile.stat().st_size > 0
    # …and without it, the empty and the cut files are rebuilt, each with a note.
    hostile.unlink()
    redo = build_feature_cache(tiny_build, recs, model, CPU, spec, CLASSES)
    assert redo.written == 3, redo
    assert len(redo.notes) == 2 and all("rebuilt" in n for n in redo.notes), redo.notes
    for n in redo.notes:
        _one_line(n)
    assert "the file is empty" in redo.notes[0] and str(cut) in redo.notes[1], redo.notes
    assert len(load_feature_cache(spec, recs, build_dir=tiny_build)) == sum(r.count for r in recs)


# ----------------------------------------------------------------------------- read-only folders


@contextlib.contextmanager
def read_only(where: Path) -> Iterator[Path]:
    """A real read-only file system (an empty tmpfs mounted ``ro``) at ``where``, unmounted
    afterwards. Where mounting is not allowed, a folder without write permission (which stops
    anyone but root; as root without mount rights the test is skipped)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    if mounted:
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
        return
    if os.geteuid() == 0:
        pytest.skip("no right to mount, and permissions do not stop root")
    where.chmod(0o555)
    try:
        yield where
    finally:
        where.chmod(0o755)


def test_read_only_run_or_cache_folder_is_one_line_before_any_work(tiny_build: Path,  # noqa: F811
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with read_only(tmp_path / "ro") as ro:
        cases = [(overrides(tiny_build, ro / "runs", **{"train.name": "r", "cv.fold": None}), ro / "runs"),
                 (overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None,
                                                               "train.freeze": FROZEN,
                                                               "train.feature_cache_dir": ro / "cache"}),
                  ro / "cache")]
        for args, folder in cases:  # the launcher refuses before torchrun starts: in-process
            capsys.readouterr()
            rc = main(["train", "--nproc", "1", *args])
            line = procs.one_line(capsys.readouterr().err, rc, 2, "serwild train: error: ", str(folder))
            assert "read-only file system" in line or "permission denied" in line, line
        # A rank started by torchrun directly (no launcher) refuses the run folder the same way…
        args = overrides(tiny_build, ro / "runs", **{"train.name": "r", "cv.fold": None})
        rank = subprocess.run([sys.executable, "-m", "serwild.trainer", *args], capture_output=True, text=True,
                              env=procs.env(), timeout=300)
        assert rank.returncode == 2 and "Traceback" not in rank.stderr, rank.stderr[-3000:]
        assert lines(rank.stderr)[-1].startswith(f"serwild.trainer: error: the run folder {ro}/runs/r cannot be "
                                                 "written (read-only file system"), rank.stderr[-3000:]
        # …and a cache there, read-only with files missing, is one line when it would be built.
        manifest = _manifest(tiny_build)
        model = build_model(len(CLASSES), "none", ARCH)
        spec = cache_spec(ro / "cache", manifest.fingerprint, model, 10)
        with pytest.raises(UsageError) as e:
            build_feature_cache(tiny_build, cache_records(manifest, "ahsn")[:1], model, CPU, spec, CLASSES)
        _one_line(str(e.value))
        assert str(e.value).startswith(f"feature cache folder {spec.dir} cannot be written (read-only"), e.value
        assert list(ro.iterdir()) == []
    assert not (tmp_path / "runs").exists()  # nothing written anywhere else either


# ----------------------------------------------------------------------------- ranks and torchrun


def test_a_non_finite_loss_is_one_line_and_exit_1(tiny_build: Path, weights_file: Path,  # noqa: F811
                                                  tmp_path: Path) -> None:
    """Cached features (the paper recipe's conv1-conv4) that hold NaN, as a damaged disk or a
    diverged producer would leave them: bound to their shards, so used, and every loss is NaN.
    The rank stops at the first step, before any update, says so once, and torchrun adds nothing.
    The temp folder: torchrun's agent, which made a ``torchelastic_*`` folder in TMPDIR on every
    launch, leaves none; the launch's own temp folder goes with it, and so does one that a
    SIGKILLed launcher left."""
    manifest = _manifest(tiny_build)
    model = build_model(len(CLASSES), str(weights_file), ARCH)  # conv1-conv4 from the file: the trainer's exactly
    spec = cache_spec(tmp_path / "cache", manifest.fingerprint, model, 10)
    records = cache_records(manifest, "ahsn")
    build_feature_cache(tiny_build, records, model, CPU, spec, CLASSES)
    for r in records:
        obj = torch.load(shard_cache_file(spec.dir, r), weights_only=True)
        obj["features"] = torch.full_like(obj["features"], float("nan"))
        torch.save(obj, shard_cache_file(spec.dir, r))
    args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 1,
                                                      "train.pretrained": weights_file,
                                                      "train.feature_cache_dir": tmp_path / "cache"})
    tmp = tmp_path / "tmp"  # and a whole launch writes nothing into the temp folder
    tmp.mkdir()
    killed = subprocess.run([sys.executable, "-c", "import os; from serwild.processes import torchrun; "
                             "print(torchrun.scratch_folder(), flush=True); os.kill(os.getpid(), 9)"],
                            capture_output=True, text=True, timeout=60, env=procs.env(TMPDIR=str(tmp)))
    assert killed.returncode == -9 and Path(killed.stdout.strip()).is_dir()  # what a killed launcher leaves
    proc = subprocess.run([*SERWILD, "train", "--nproc", "1", *args], capture_output=True, text=True,
                          env=procs.env(TMPDIR=str(tmp)), timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp)) == []
    for noise in (*REPORT, "training failed"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    said = _run_lines(proc.stderr)
    assert re.search(r"feature cache .*: 0 shard\(s\) computed, [1-9]\d* reused", proc.stderr), said
    assert re.fullmatch(r"serwild\.trainer: error: non-finite loss at epoch 1 batch 1 \(rank 0: nan\): lower the "
                        r"learning rate .*", said[-1]), said
    assert [x for x in said if "error" in x.lower()] == [said[-1]], said
    assert not (tmp_path / "runs" / "r" / "last.pt").exists()


def _ranks(needle: str, launcher: int) -> list[int]:
    """The trainer's rank processes (in sessions of their own) whose command line names ``needle``.
    A process torchrun has forked but not yet exec'd also has a session of its own and the agent's
    command line (which names serwild.trainer), but not a rank's RANK: it is not counted."""
    out = []
    for p in procs.pids_running(needle):
        with contextlib.suppress(OSError):
            if (os.getsid(p) != launcher and b"serwild.trainer" in Path(f"/proc/{p}/cmdline").read_bytes()
                    and _rank_of(p) is not None):
                out.append(p)
    return out


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    rank = next((e for e in env if e.startswith(b"RANK=")), None)
    return None if rank is None else int(rank.split(b"=", 1)[1])


def _end(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _run(tmp_path: Path, build: Path, nproc: int) -> tuple[subprocess.Popen, Path]:
    """A run still in its first epoch when the test kills a process of it: 50,000 steps an epoch
    (one of 4 steps was over before the kill under load, and its checkpoint changed the verdict)."""
    args = overrides(build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 2,
                                                 "train.batch_size": 2, "train.samples_per_epoch": 100_000})
    return start([*SERWILD, "train", "--nproc", str(nproc), *args]), tmp_path / "runs" / "r"


def test_ranks_end_with_a_sigkilled_torchrun_agent(tiny_build: Path, tmp_path: Path) -> None:  # noqa: F811
    """One rank: each rank asks for the parent-death signal itself, so one shows what every rank does."""
    proc, run = _run(tmp_path, tiny_build, nproc=1)
    with session(proc):
        try:
            # metrics.jsonl: rank 0 writes it once the ranks met in the process group, after each asked for
            # the parent-death signal (config.yaml is the launcher's, written before they start).
            wait_for(lambda: (run / "metrics.jsonl").is_file() and len(_ranks(str(tmp_path), proc.pid)) == 1, proc,
                     300, "the rank at work")
            (agent,) = [p for p in procs.session_pids(proc.pid) if p != proc.pid]
            os.kill(agent, signal.SIGKILL)
            left = procs._wait_empty(lambda: _ranks(str(tmp_path), proc.pid), 3)
            assert left == [], f"ranks outlived their agent: {procs.describe(left)}"
            _, err = proc.communicate(timeout=60)
        finally:
            _end(_ranks(str(tmp_path), proc.pid))
    assert proc.returncode == 1, err[-3000:]
    assert _run_lines(err)[-1] == ("serwild train: torchrun was killed by SIGKILL (its ranks stopped with it); "
                                   "no epoch was saved: run again with --overwrite"), err[-3000:]
    assert "Traceback" not in err and not (run / "last.pt").exists()


def test_a_sigkilled_rank_is_one_line_without_torchruns_report(tiny_build: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    proc, run = _run(tmp_path, tiny_build, nproc=2)
    with session(proc):
        try:
            wait_for(lambda: (run / "config.yaml").is_file() and len(_ranks(str(tmp_path), proc.pid)) == 2, proc,
                     300, "both ranks at work")
            victim = next(p for p in _ranks(str(tmp_path), proc.pid) if _rank_of(p) == 1)
            os.kill(victim, signal.SIGKILL)
            _, err = proc.communicate(timeout=200)
        finally:
            _end(_ranks(str(tmp_path), proc.pid))
    assert proc.returncode == 1, err[-3000:]
    for noise in REPORT:
        assert noise not in err, err[-3000:]
    said = [x for x in _run_lines(err) if "killed" in x or "fail" in x or "stopped" in x]
    assert f"torchrun: error: rank 1 (PID {victim}) was killed by SIGKILL" in said, err[-3000:]
    assert len(said) <= 3, err  # that line, maybe the other rank's "stopped", the launcher's verdict


@pytest.mark.slow
def test_a_diverging_run_is_warned_of(tiny_build: Path, tmp_path: Path) -> None:  # noqa: F811
    """The largest learning rate allowed (train.scratch_lr=10, Adam) sends the loss to ~10^29 while
    it stays finite: the run ends with exit 0 as before, but each such epoch says it is diverging
    and which key to lower."""
    args = overrides(tiny_build, tmp_path / "runs", **{"train.name": "r", "cv.fold": None, "train.epochs": 2,
                                                      "train.samples_per_epoch": 32, "train.scratch_lr": 10})
    proc = subprocess.run([*SERWILD, "train", "--nproc", "1", *args], capture_output=True, text=True,
                          env=procs.env(), timeout=400)
    warned = [x for x in _run_lines(proc.stderr) if "the run is diverging" in x]
    pattern = (r"warning: the training loss \(\S+\) is over 10x a uniform guess's \(ln 4 = 1\.39\): the run is "
               r"diverging; lower the learning rate \(now 10:")
    assert warned and all(re.search(pattern, x) for x in warned), proc.stderr[-3000:]
