"""End to end: build the hand-made tree with Ray, read it back with plain webdataset (no
serwild code), and check determinism across worker counts, resume after a kill, verify."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from serwild.builder.build import run_build
from serwild.cli import main as cli
from tests.builder.conftest import tree_config
from tests.conftest import nothing_left, short_temp_folder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _hashes(out: Path) -> dict[str, str]:
    return {s["path"]: s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]}


@pytest.fixture(scope="module")
def ray_build() -> Iterator[tuple[Path, Path]]:
    """A 2-worker Ray build into a short folder (``<base>/shards``), with TMPDIR an empty folder of
    its own: Ray's session folder lives in the build folder when its sockets' paths fit (about 40
    bytes of folder, as here; else a short folder in TMPDIR: tests/faults' full-disk case), and
    once the build is done nothing of Ray's is left there, nor anything in TMPDIR."""
    with short_temp_folder() as base, short_temp_folder() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(tmp))
        mp.delenv("RAY_TMPDIR", raising=False)
        mp.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
        cfg = tree_config(base, datasets="[ahsn]", **{"ray.num_cpus": 2})
        out = run_build(cfg, executor="ray")
        nothing_left(tmp, out)
        yield base, out


def test_shards_read_back_with_plain_webdataset(ray_build: tuple[Path, Path]) -> None:
    base, out = ray_build
    m = json.loads((out / "manifest.json").read_text())
    classes = m["datasets"]["ahsn"]["classes"]
    seen_keys = set()
    for shard in m["shards"]:
        url = str(out / shard["path"])
        n = 0
        for key, img, meta in wds.WebDataset(url, shardshuffle=False).decode("rgb8").to_tuple("__key__", "png", "json"):
            assert img.shape == (257, 259, 3) and img.dtype == np.uint8
            assert meta["condition"] == shard["condition"] and meta["split"] == shard["split"]
            assert meta["fold"] == shard["fold"] and meta["dataset"] == "ahsn"
            assert classes[meta["class_index"]] == meta["label"]
            assert key == f"{meta['utterance']}_b{meta['block']:03d}_{meta['condition']}"
            assert meta["start_s"] == meta["block"] * 1.0 and meta["session"] == meta["utterance"][:5]
            if meta["condition"] == "clean":
                assert meta["snr_db"] is None and meta["noise"] is None
            else:
                assert meta["snr_db"] == float(meta["condition"][3:]) and meta["noise_offset_s"] >= 0
            seen_keys.add(key)
            n += 1
        assert n == shard["count"]
        with tarfile.open(url) as tf:
            names = tf.getnames()
            assert names == sorted(names) and {t.mtime for t in tf.getmembers()} == {0}
    assert len(seen_keys) == m["totals"]["samples"] == sum(s["count"] for s in m["shards"])
    assert sum(m["counts"]["ahsn"]["test"]["clean"].values()) > 0


def test_every_input_is_used_or_rejected(ray_build: tuple[Path, Path]) -> None:
    base, out = ray_build
    from serwild.builder.corpus import parse_emo_evaluation

    listed = {u for txt in (base / "corpus").rglob("EmoEvaluation/Ses*.txt") for u, _ in parse_emo_evaluation(txt)}
    m = json.loads((out / "manifest.json").read_text())
    used = set()
    for shard in m["shards"]:
        with tarfile.open(out / shard["path"]) as tf:
            used |= {n.split("_b")[0] for n in tf.getnames()}
    rejected = {json.loads(line)["item"] for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert used | rejected == listed and not used & rejected
    assert m["totals"]["utterances_used"] == len(used)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "| split | condition | ang | hap | sad | neu | total |" in card
    assert not (out / "DATASET.md").exists()  # one card only: README.md, what hubs read


def test_worker_count_does_not_change_bytes(ray_build: tuple[Path, Path], tmp_path: Path) -> None:
    """Two Ray workers and one serial process write the same bytes (and the same fingerprint)."""
    _, out2 = ray_build
    serial = run_build(tree_config(tmp_path / "serial", datasets="[ahsn]"), executor="serial")
    assert _hashes(serial) == _hashes(out2)
    fp = lambda o: json.loads((o / "manifest.json").read_text())["fingerprint"]  # noqa: E731
    assert fp(serial) == fp(out2)


def test_the_log_says_which_node_built_each_shard_and_the_manifest_does_not(ray_build: tuple[Path, Path]) -> None:
    _, out = ray_build
    lines = [json.loads(x) for x in (out / "build-log.jsonl").read_text().splitlines()]
    shards, per_node = lines[:-1], lines[-1]["shard_tasks_per_node"]
    manifest = json.loads((out / "manifest.json").read_text())
    [(node, n)] = per_node.items()  # one local Ray: one node, at 127.0.0.1
    assert node.startswith("127.0.0.1/") and n == len(shards) == len(manifest["shards"])
    assert {r["node"] for r in shards} == {node}
    assert not [s for s in manifest["shards"] if "node" in s]  # a run detail: not in the data's record


def _listening(pids: list[int]) -> set[str]:
    """The local addresses the TCP sockets of ``pids`` listen on (from /proc/net/tcp{,6})."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir() if Path(f"/proc/{pid}/fd").is_dir() else []:
            try:
                if (target := os.readlink(fd)).startswith("socket:["):
                    inodes.add(target[8:-1])
            except OSError:
                continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])
                words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]  # each 32-bit word is host order
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (the gcs, raylet, agents and workers of a local Ray)."""
    children: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], list(children.get(root, []))
    while todo:
        found.append(pid := todo.pop())
        todo.extend(children.get(pid, []))
    return found


def test_the_loopback_pin_still_holds_in_this_ray() -> None:
    """serwild's one use of a Ray private API (serwild.processes.raystart.loopback_pinned): if an
    upgrade of Ray moves ENABLE_RAY_CLUSTER or stops reading it where it resolves 127.0.0.1, a
    local build would listen on the network. This test says so before any user does."""
    from ray._private import ray_constants, services

    from serwild.processes.raystart import loopback_pinned

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), "Ray moved ENABLE_RAY_CLUSTER: fix raystart.loopback_pinned"
    with loopback_pinned():
        assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1", "the pin no longer keeps 127.0.0.1"


def test_a_killed_drivers_ray_session_folder_in_tmp_goes_with_the_next_build() -> None:
    """Where a build folder's path is too long for Ray's socket paths, the session folder is
    /tmp/serwild-ray-<driver pid>-*: a driver killed with SIGKILL cannot remove it, so the next
    local Ray removes every one whose driver is dead (and none of a live one)."""
    import shutil
    import subprocess

    from serwild.processes import raystart

    dead = subprocess.Popen(["true"])
    dead.wait()
    left = Path(tempfile.mkdtemp(prefix=f"{raystart.ELSEWHERE}{dead.pid}-", dir="/tmp"))
    live = Path(tempfile.mkdtemp(prefix=f"{raystart.ELSEWHERE}{os.getpid()}-", dir="/tmp"))
    mine = None
    try:
        mine = raystart.session_folder(None)
        assert mine is not None and mine.name.startswith(f"{raystart.ELSEWHERE}{os.getpid()}-")
        assert not left.exists() and live.is_dir()
    finally:
        for folder in (left, live, mine):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def test_a_local_ray_listens_on_loopback_only_with_token_auth(tmp_path: Path) -> None:
    """The Ray a local build starts: token authentication on (Ray's default), every node and every
    listening socket of its processes at 127.0.0.1 (Ray would use the machine's network address)."""
    import math

    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from serwild.config import load_config
    from serwild.processes import executors

    with executors.open_executor("ray", load_config(None, ["ray.num_cpus=1"]).ray, tmp_path) as ex:
        [done] = list(ex.map(math.sqrt, [(16.0,)], "a task"))
        assert done.result == 4.0 and done.node.startswith("127.0.0.1/")
        assert is_token_auth_enabled()
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        addresses = _listening(_descendants(os.getpid()))
        assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
    assert not ray.is_initialized() and not list(tmp_path.iterdir())  # Ray's session folder went with it


def test_killed_build_resumes_to_identical_bytes(ray_build: tuple[Path, Path], tmp_path: Path) -> None:
    _, reference = ray_build
    cfg = tree_config(tmp_path, datasets="[ahsn]")
    overrides = ["corpus.kind=iemocap", f"corpus.root={cfg.corpus.root}", f"noise.dir={cfg.noise.dir}",
                 f"out={cfg.out}", "shard.max_samples=40", "datasets=[ahsn]"]
    # `serwild build` through the test's own driver, which holds it after 3 shards: the kill
    # always lands mid-build.
    cmd = [sys.executable, "-m", "tests.faults.held_build", "3", "--serial", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    log = Path(cfg.out) / "build-log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().splitlines()) == 3
    assert not (Path(cfg.out) / "manifest.json").exists(), "the build finished before it could be killed"
    # A shard written by an older run and damaged since must be rebuilt, not trusted.
    first = json.loads(log.read_text().splitlines()[0])["path"]
    with open(Path(cfg.out) / first, "r+b") as f:
        f.truncate(1024)
    assert cli(["build", "--serial", *overrides]) == 0
    assert _hashes(Path(cfg.out)) == _hashes(reference)
    assert cli(["verify", cfg.out]) == 0


def test_verify_catches_cut_shards(ray_build: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out = ray_build
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    m = json.loads((copy / "manifest.json").read_text())
    mid, boundary, gone = (copy / m["shards"][i]["path"] for i in range(3))
    with open(mid, "r+b") as f:  # cut in the middle of a member
        f.truncate(mid.stat().st_size // 2 + 7)
    with tarfile.open(boundary) as tf:  # cut exactly where the last sample's first member starts
        last_key = tf.getnames()[-1].split(".")[0]
        offset = next(t.offset for t in tf.getmembers() if t.name.startswith(last_key))
    with open(boundary, "r+b") as f:
        f.truncate(offset)
    with tarfile.open(boundary) as tf:  # still a readable tar, just shorter: only the manifest tells
        assert len(tf.getnames()) >= 2
    gone.unlink()
    (copy / "ahsn" / "stray.tar").write_bytes(b"")
    capsys.readouterr()
    assert cli(["verify", str(copy)]) == 1
    out_text = capsys.readouterr().out
    for p in (mid, boundary):
        assert f"bad: {p.relative_to(copy)}" in out_text
    assert f"missing: {gone.relative_to(copy)}" in out_text and "extra: ahsn/stray.tar" in out_text
    assert cli(["verify", str(out)]) == 0
