"""A published build, used end to end over HTTP as a user would: ``serwild verify URL``,
``serwild train --nproc 2 train.shards=URL``, ``serwild evaluate --shards URL``, and a
server that stops answering mid-epoch. The server is tests/data/server.py on 127.0.0.1
(in this process, bounded lifetime). The commands run in-process (their exit status and
output are what is checked) and training's ranks in real torchrun processes; the stalled
job's launcher is a process of its own (a session the test can end whatever happens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from serwild.cli import main as cli
from serwild.data import open_build
from serwild.data.fetch import RemoteOptions
from tests.data.server import LoopbackServer
from tests.data.tinybuild import manifest_of, tiny_build  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

TRAIN = ["train.dataset=ahsn", "train.epochs=1", "train.batch_size=8", "train.num_workers=0",
         "train.arch=tiny", "train.pretrained=none", "train.shuffle_buffer=8", "train.timeout_s=60", "train.device=cpu"]
REMOTE = ["remote.timeout_s=1", "remote.retries=1", "remote.backoff_s=0.1"]
ATTEMPTS = 2  # remote.retries=1: a stalled read is tried twice, then given up
SUBPROCESS_TIMEOUT_S = 240  # a hang fails the test instead of stalling the suite


def test_verify_a_url_and_a_shard_cut_on_the_server(tiny_build: Path, tmp_path: Path,  # noqa: F811
                                                    capsys: pytest.CaptureFixture) -> None:
    m = manifest_of(tiny_build)
    copy = Path(shutil.copytree(tiny_build, tmp_path / "build"))
    (copy / "ahsn" / "stray.tar").write_bytes(b"")  # only a folder can reveal it
    cut = [s for s in m.shards if s.split == "test"][1]
    with LoopbackServer(copy, max_lifetime_s=60) as srv:
        capsys.readouterr()
        assert cli(["verify", srv.url(), *REMOTE]) == 0
        out, err = capsys.readouterr()
        assert f"verify: {len(m.shards)} shards, {m.totals['samples']} samples OK ({srv.url()})" in out
        assert "extra shards not checked" in err and "remote" in err
        gets = sorted(p for method, p, _ in srv.requests if method == "GET")
        assert gets == sorted(["manifest.json"] + [s.path for s in m.shards])  # each shard once

        assert cli(["verify", "--quick", srv.url(), *REMOTE]) == 0  # sizes by HEAD
        assert {meth for meth, p, _ in srv.requests[len(gets):] if p != "manifest.json"} == {"HEAD"}

        srv.cut(cut.path, 10240)  # the server's copy is short (a cut at a tar record boundary)
        capsys.readouterr()
        assert cli(["verify", srv.url(), *REMOTE]) == 1
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"bad: {cut.path} has 10240 bytes, manifest says {cut.bytes}"]
        assert f"verify: 1 problem(s) in {len(m.shards)} shards of {srv.url()}" in err
    capsys.readouterr()
    assert cli(["verify", str(copy)]) == 1  # the folder itself: the stray tar is seen there
    assert "extra: ahsn/stray.tar (not in the manifest)" in capsys.readouterr().out


def test_open_build_loads_a_url_like_a_folder(tiny_build: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    local = open_build(tiny_build)
    with LoopbackServer(tiny_build, max_lifetime_s=60) as srv:
        remote = open_build(srv.url(), RemoteOptions(timeout_s=2, retries=1, backoff_s=0.1))
        assert remote.manifest == local.manifest == m and remote.location == srv.url()
        assert remote.verify() == [] and remote.verify(full=False) == []
        for build in (local, remote):
            batches = list(build.loader("ahsn", "test", ["clean", "snr15"], batch_size=4, as_uint8=True))
            metas = [meta for _, _, ms in batches for meta in ms]
            assert len(metas) == sum(s.count for s in build.records("ahsn", "test", ["clean", "snr15"]))
            assert batches[0][0].shape[1:] == (3, 256, 256) and str(batches[0][0].dtype) == "torch.uint8"
            assert {meta["condition"] for meta in metas} == {"clean", "snr15"}
        assert remote.shard_urls(remote.records("ahsn", "test", ["clean"]))[0].startswith(srv.url("ahsn/test/"))


def test_train_two_ranks_then_evaluate_from_a_url(tiny_build: Path, tmp_path: Path,  # noqa: F811
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """The launcher runs in-process; capfd also holds what its torchrun processes print."""
    m = manifest_of(tiny_build)
    runs = tmp_path / "runs"
    with LoopbackServer(tiny_build, max_lifetime_s=200) as srv:
        url = srv.url()
        cache = f"remote.cache_dir={tmp_path / 'cache'}"  # both ranks fetch into one cache
        rc = cli(["train", "--nproc", "2", f"train.shards={url}", f"out={tmp_path / 'unused'}",
                  f"train.run_dir={runs}", "train.name=remote", "train.samples_per_epoch=16", *TRAIN, *REMOTE, cache])
        err = capfd.readouterr().err
        assert rc == 0, err[-3000:]
        assert "is remote: shard sizes checked (HEAD)" in err
        assert not (tmp_path / "unused").exists()
        # the default pre-flight did not download the build twice: shards were HEADed, then fetched
        heads = {p for meth, p, _ in srv.requests if meth == "HEAD"}
        assert heads == {s.path for s in m.shards if s.dataset == "ahsn"  # train and validation
                         and s.split in ("train", "validation") and s.condition == "clean"}
        import torch

        ckpt = torch.load(runs / "remote" / "best.pt", map_location="cpu", weights_only=False)
        assert ckpt["shards"] == url  # a URL stays a URL (Path("http://…") would collapse the //)
        assert ckpt["arch"] == "tiny"  # the checkpoint records the model it holds
        record = json.loads((runs / "remote" / "metrics.jsonl").read_text().splitlines()[0])
        assert record["samples"] == 16 and record["world_size"] == 2

        rc = cli(["evaluate", "--checkpoint", str(runs / "remote" / "best.pt"), "--shards", url,
                  "--out", str(tmp_path / "report"), "eval.batch_size=16", "eval.num_workers=0",
                  "eval.device=cpu", *REMOTE, cache])
        assert rc == 0, capfd.readouterr().err[-3000:]
        # every shard fetched into the cache at most once, whatever the epochs, ranks and evaluation
        gets = [p for meth, p, _ in srv.requests if meth == "GET" and p.endswith(".tar")]
        assert gets and len(gets) == len(set(gets)), gets
    result = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert result["shards"] == url
    expected = {c: sum(s.count for s in m.shards if s.dataset == "ahsn" and s.split == "test"
                       and s.condition == c) for c in m.conditions}
    assert {c: v["samples"] for c, v in result["conditions"].items()} == expected


def test_a_server_that_stops_answering_mid_epoch_ends_the_job(tiny_build: Path, tmp_path: Path) -> None:  # noqa: F811
    m = manifest_of(tiny_build)
    with LoopbackServer(tiny_build, max_lifetime_s=200) as srv:
        url = srv.url()
        shard_paths = {s.path for s in m.shards}
        cmd = [sys.executable, "-m", "serwild", "train", "--nproc", "2", f"train.shards={url}",
               f"train.run_dir={tmp_path / 'runs'}", "train.name=stall", "train.samples_per_epoch=2000",
               *TRAIN, *REMOTE, f"remote.cache_dir={tmp_path / 'cache'}"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
            while not any(meth == "GET" and p in shard_paths for meth, p, _ in list(srv.requests)):
                assert proc.poll() is None and time.monotonic() < deadline, "training never started streaming"
                time.sleep(0.05)
            stalled_at = len(srv.requests) + 2
            srv.stall_after(stalled_at)  # two more requests, then silence: mid-epoch
            _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
            unanswered = srv.requests[stalled_at:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    # a rank's one-line error (torchrun adds no report), and exit 1: a dead server is no usage error
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("serwild.trainer: error: ")]
    assert errors, err[-3000:]
    assert all(f"{url}" in line and "no answer within 1 s (gave up after 2 attempts" in line
               for line in errors), errors
    assert "serwild train: training failed" not in err and "ChildFailedError" not in err
    assert "[rank0]:" not in err and "[rank1]:" not in err  # no rank's traceback (gloo's "closed by peer")
    # Bounded: each rank reads one shard at a time and gave up after its attempts (each ends at
    # remote.timeout_s); nothing asked the silent server again, and the job ended.
    asked = Counter(path for _, path, _ in unanswered)
    assert asked and sum(asked.values()) <= 2 * ATTEMPTS, asked
