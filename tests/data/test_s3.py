"""Publishing to and reading from a real S3-compatible server on 127.0.0.1 (moto's server,
tests/data/s3server.py): publish → verify → train → evaluate by s3:// URL, a publish killed
mid-upload and resumed, missing credentials, a missing bucket, a stalled server. Every
serwild command runs as a real process; AWS clients see only the loopback endpoint and
dummy credentials (no config files, no instance metadata)."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.data.tinybuild import manifest_of, tiny_build  # noqa: F401 - fixture

s3fs = pytest.importorskip("s3fs")
s3server = pytest.importorskip("tests.data.s3server")

from serwild.builder.labels import PRESETS  # noqa: E402
from serwild.cli import main as cli  # noqa: E402 - after the skips
from serwild.data import fetch, open_build  # noqa: E402
from serwild.data.fetch import RemoteError, RemoteOptions  # noqa: E402
from serwild.data.loaders import make_train_loader, shard_set  # noqa: E402

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order

REMOTE = ["remote.timeout_s=2", "remote.retries=1", "remote.backoff_s=0.1"]
FAST = RemoteOptions(timeout_s=0.5, retries=1, backoff_s=0.05)
TIMEOUT_S = 240


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(server, environment for serwild processes); this process's AWS clients see it too. A process
    keeps its S3 clients (serwild's and s3fs's caches), which read the endpoint from the environment
    when made: this test's in-process commands start without the clients of an earlier test's server."""
    with s3server.LoopbackS3(max_lifetime_s=300) as srv:
        env = s3server.s3_env(srv.endpoint, str(tmp_path))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setattr(fetch, "_FILESYSTEMS", {})
        s3fs.S3FileSystem.clear_instance_cache()
        yield srv, dict(os.environ)
        s3fs.S3FileSystem.clear_instance_cache()


def _bucket(srv, name: str) -> s3fs.S3FileSystem:
    fs = s3fs.S3FileSystem(endpoint_url=srv.endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(name)
    return fs


def serwild(args: list[str], env: dict[str, str], cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serwild", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _uploaded(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("uploaded ")]


@pytest.mark.slow
def test_publish_then_verify_train_and_evaluate_from_s3(tiny_build: Path, tmp_path: Path, s3,  # noqa: F811
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """Every command runs in-process (their output and exit status are checked; this process
    sees the server's environment too); training is torchrun's processes (capfd holds their output)."""
    srv, env = s3
    m = manifest_of(tiny_build)
    fs = _bucket(srv, "pub")
    url = "s3://pub/serwild/tiny"
    capfd.readouterr()
    assert cli(["publish", str(tiny_build), url, *REMOTE]) == 0
    out = capfd.readouterr().out
    uploaded = _uploaded(out)
    shard_paths = [s.path for s in m.shards]
    assert uploaded[:len(shard_paths)] == shard_paths and uploaded[-2:] == ["README.md", "manifest.json"]
    assert "build-log.jsonl" not in uploaded
    assert f"{len(m.shards)} shards, {m.totals['samples']} samples OK" in out
    published = json.loads(fs.cat_file("pub/serwild/tiny/manifest.json"))
    assert published["shards"] == [r.to_dict() for r in m.shards] and published["fingerprint"] == m.fingerprint
    assert str(tiny_build.parent) not in json.dumps(published)  # no folder of this machine
    assert fs.metadata(f"pub/serwild/tiny/{shard_paths[0]}")["sha256"] == m.shards[0].sha256

    assert cli(["publish", str(tiny_build), url, *REMOTE]) == 0  # nothing to do
    assert _uploaded(capfd.readouterr().out) == []
    # An object damaged in the bucket (same size, its sha256 metadata left as it was) is found and replaced:
    # metadata is anyone's to write, so a rerun compares the bytes.
    first = f"pub/serwild/tiny/{shard_paths[0]}"
    good = fs.cat_file(first)
    fs.pipe_file(first, bytes([good[0] ^ 0xFF]) + good[1:], Metadata={"sha256": m.shards[0].sha256})
    assert cli(["publish", str(tiny_build), url, *REMOTE]) == 0
    assert _uploaded(capfd.readouterr().out) == [shard_paths[0]] and fs.cat_file(first) == good
    assert cli(["verify", url, *REMOTE]) == 0
    assert f"{len(m.shards)} shards" in capfd.readouterr().out

    # The bucket gives the trainer the very batches the folder gives (same seed, same order)…
    records = [r for r in m.shards if r.split == "train" and r.condition == "clean"]
    cached = dataclasses.replace(FAST, cache_dir=str(tmp_path / "cache"))
    batches = {name: list(make_train_loader(shard_set(open_build(where, cached), records), CLASSES, 8, 4, seed=3,
                                            epoch=0, shuffle_buffer=8, as_uint8=True))
               for name, where in (("s3", url), ("local", str(tiny_build)))}
    assert all(torch.equal(a, b) for xa, xb in zip(batches["s3"], batches["local"]) for a, b in zip(xa, xb))
    # …and a real training run streams them from the bucket.
    runs = tmp_path / "runs"
    rc = cli(["train", "--nproc", "1", f"train.shards={url}", f"train.run_dir={runs}", "train.name=s3",
              "train.dataset=ahsn", "train.epochs=1", "train.batch_size=8", "train.num_workers=0",
              "train.arch=tiny", "train.pretrained=none", "train.shuffle_buffer=8", "train.timeout_s=60",
              "train.device=cpu", "train.samples_per_epoch=16", *REMOTE, f"remote.cache_dir={tmp_path / 'cache'}"])
    assert rc == 0, capfd.readouterr().err[-3000:]
    assert torch.load(runs / "s3" / "best.pt", map_location="cpu", weights_only=True)["shards"] == url
    reports = {}
    for name, shards in (("s3", url), ("local", str(tiny_build))):
        assert cli(["evaluate", "--checkpoint", str(runs / "s3" / "best.pt"), "--shards", shards,
                    "--out", str(tmp_path / name), "eval.batch_size=16", "eval.num_workers=0", "eval.device=cpu",
                    "eval.bootstrap=0", *REMOTE, f"remote.cache_dir={tmp_path / 'cache'}"]) == 0, \
            capfd.readouterr().err[-3000:]
        reports[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert reports["s3"]["shards"] == url
    assert reports["s3"]["conditions"] == reports["local"]["conditions"]  # the same scores, sample for sample


def test_a_publish_killed_mid_upload_shows_no_manifest_and_resumes(tiny_build: Path, tmp_path: Path,  # noqa: F811
                                                                   s3, capsys: pytest.CaptureFixture[str]) -> None:
    srv, env = s3
    fs = _bucket(srv, "resume")
    url = "s3://resume/tiny"
    srv.put_delay_s = 0.2  # every upload takes a while: the kill lands mid-way
    proc = subprocess.Popen([sys.executable, "-m", "serwild", "publish", str(tiny_build), url, *REMOTE], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            first += _uploaded(line)
            if len(first) == 3:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(first) == 3
    assert not fs.exists("resume/tiny/manifest.json")  # a reader sees no build, not a partial one
    with pytest.raises(RemoteError, match="not found"):
        open_build(url, FAST)
    stamps = {p: fs.info(f"resume/tiny/{p}")["LastModified"] for p in first}
    srv.put_delay_s = 0.0
    capsys.readouterr()
    rc = cli(["publish", str(tiny_build), url, *REMOTE])  # the same command again, in-process
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    second = _uploaded(out)
    assert not set(first) & set(second) and second[-1] == "manifest.json"
    assert "verified" in out
    assert {p: fs.info(f"resume/tiny/{p}")["LastModified"] for p in first} == stamps  # not uploaded again


def test_missing_credentials_and_a_missing_bucket_are_one_line(tiny_build: Path, tmp_path: Path, s3) -> None:  # noqa: F811
    srv, env = s3
    _bucket(srv, "real")
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    _one_line(serwild(["verify", "s3://real/x", *REMOTE], no_keys, tmp_path, 60), "s3://real/x", "no credentials")
    _one_line(serwild(["publish", str(tiny_build), "s3://real/x", *REMOTE], no_keys, tmp_path, 60),
              "s3://real/x", "no credentials")
    _one_line(serwild(["publish", str(tiny_build), "s3://no-such-bucket/x", *REMOTE], env, tmp_path, 60),
              "s3://no-such-bucket/x", "bucket")
    _one_line(serwild(["verify", "s3://no-such-bucket/x", *REMOTE], env, tmp_path, 60),
              "s3://no-such-bucket/x/manifest.json", "not found")


def test_a_stalled_s3_server_ends_in_one_line_within_the_timeout(tiny_build: Path, tmp_path: Path, s3) -> None:  # noqa: F811
    srv, env = s3
    fs = _bucket(srv, "stall")
    fs.put_file(str(tiny_build / "manifest.json"), "stall/b/manifest.json")
    build = open_build("s3://stall/b", RemoteOptions(timeout_s=0.5, retries=1, backoff_s=0.05,
                                                     endpoint_url=srv.endpoint))
    asked = len(srv.requests)
    srv.stall()
    with pytest.raises(RemoteError) as info:
        build.verify()
    text = str(info.value)
    assert "\n" not in text and text.startswith("s3://stall/b/") and "no answer within 0.5 s" in text, text
    # Bounded: the first shard asked once per attempt (each ends at the timeout), then nothing more.
    first = manifest_of(tiny_build).shards[0].path
    assert [p for _, p in srv.requests[asked:]] == [f"/stall/b/{first}"] * (FAST.retries + 1), text


def test_an_endless_s3_body_costs_a_reads_worth_of_memory(tiny_build: Path, tmp_path: Path, s3,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A server that ignores Range and streams a body without end (claiming a terabyte): fetching
    a shard stops once it passes the manifest's size (a bad shard, said in one line), having held
    about one read in memory (fsspec's ranged read-ahead buffered the body whole: 2.8 GB in 5 s,
    then MemoryError)."""
    srv, _ = s3
    fs = _bucket(srv, "endless")
    fs.put(str(tiny_build) + "/", "endless/b/", recursive=True)
    first = manifest_of(tiny_build).shards[0].path
    srv.endless(f"/endless/b/{first}")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    assert cli(["verify", "s3://endless/b", *REMOTE]) == 1
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bad:")]
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert said == [f"bad: {first} has more than the {manifest_of(tiny_build).shards[0].bytes} bytes the "
                    "manifest lists (has it changed?): refusing the rest"], said
    assert time.monotonic() - start < 60 and grew_mb < 200, (grew_mb, srv.endless_sent)
    assert srv.endless_sent < 64 << 20  # the body was not read on
