"""`serwild build ray.address=…` on a real multi-node Ray cluster: a head and two worker nodes,
each started by `ray start` on a host of its own (a network namespace with its own address, one
CPU each, token authentication on), the build run as a user runs it on the head's host.

- The shard tasks run on several nodes (the build's per-node record says which), and the shards
  are byte-identical to a local serial build of the same config.
- A worker node killed mid-build (its raylet and its workers, SIGKILL by PID, while one of them
  writes a shard): Ray retries that task on the nodes left and the build finishes, with the same
  bytes; another node wrote that shard.
- A driver without the cluster's token, an address where nothing listens and one that never
  answers: one line naming the address, exit status 2, within the bound. The connection check
  (ray.init in a process of its own) also wants a node of the cluster on the driver's host.

The node kill comes last: the cluster is shared by the module and has one node fewer after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serwild.processes.atomic import TEMP_NAME, TMP_MARK
from tests.cluster.conftest import raylet_children
from tests.cluster.raycluster import RayCluster
from tests.conftest import TINY_BUILD
from tests.faults.procs import one_line

pytestmark = pytest.mark.slow

BUILD_S = 300  # a hang guard, not a timing: the build takes ~15 s here
BOUND_S = 30  # ray.connect_timeout_s at its default


def build_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY_BUILD, f"corpus.root={corpus}", f"noise.dir={corpus / 'noise'}", f"out={out}", *extra]


def shard_hashes(build: Path) -> dict[str, str]:
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(build.rglob("*.tar"))}


def per_node(build: Path) -> dict[str, int]:
    """The last run's shard tasks per node, from the build's log (its last line)."""
    return json.loads((build / "build-log.jsonl").read_text().splitlines()[-1])["shard_tasks_per_node"]


def finished(proc: subprocess.Popen, seconds: float) -> tuple[int, str]:
    _, err = proc.communicate(timeout=seconds)
    return proc.returncode, err


def test_a_cluster_build_runs_on_several_nodes_and_matches_a_local_build(
        ray_cluster: RayCluster, tiny_corpus: Path, tiny_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    rc, err = finished(ray_cluster.start_build(build_args(tiny_corpus, out, f"ray.address={ray_cluster.address}")),
                       BUILD_S)
    assert rc == 0, err[-3000:]
    nodes = per_node(out)
    ips = {h.ip for h in (ray_cluster.head, *ray_cluster.workers)}
    assert len({k.split("/")[0] for k in nodes}) >= 2 and {k.split("/")[0] for k in nodes} <= ips, (nodes, ips)
    assert sum(nodes.values()) == len(shard_hashes(tiny_build))
    assert "shard tasks per node: " in err
    assert shard_hashes(out) == shard_hashes(tiny_build)


@pytest.fixture(scope="module")
def refused(ray_cluster: RayCluster, tiny_corpus: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, subprocess.Popen]]]:
    """Three builds that must each end in one line, started together (each is mostly Python's
    start-up, so they share the cores): name → (the address it was given, its process).

    - no token: the cluster's address, from a driver without the cluster's token;
    - nobody: a port nobody listens on;
    - silent: a port that accepts connections (the kernel does, for a listening socket) and never
      says a word (a listener on the head's host), with ray.connect_timeout_s=3."""
    base = tmp_path_factory.mktemp("refused")
    head = ray_cluster.head.ip
    silent = ray_cluster.start([sys.executable, "-c", SILENT, head])
    assert silent.stdout is not None
    port = int(silent.stdout.readline())
    cases = {"no token": (ray_cluster.address, [], False),
             "nobody": (f"{head}:1", [], True),  # a fresh host: nothing listens on port 1
             "silent": (f"{head}:{port}", ["ray.connect_timeout_s=3"], True)}
    started = {name: (address, ray_cluster.start_build(
        build_args(tiny_corpus, base / name.replace(" ", "-"), f"ray.address={address}", *extra), token=token))
        for name, (address, extra, token) in cases.items()}
    yield started
    for _, proc in started.values():  # the silent port stays open until each has ended
        if proc.returncode is None:
            proc.communicate(timeout=BOUND_S + BUILD_S)


# Listens on HOST (argv[1]), prints its port and never says a word, for 10 minutes at most (the
# fixture ends it before).
SILENT = ("import socket, sys, time; s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(8); "
          "print(s.getsockname()[1], flush=True); time.sleep(600)")


def test_a_driver_without_the_clusters_token_is_refused_in_one_line(refused: dict) -> None:
    address, proc = refused["no token"]
    rc, err = finished(proc, BOUND_S + BUILD_S)
    one_line(err, rc, 2, f"ray.address {address}: the cluster refused this driver's token")


def test_an_address_where_nothing_listens_is_one_line(refused: dict) -> None:
    address, proc = refused["nobody"]
    rc, err = finished(proc, BOUND_S + BUILD_S)  # the guard: Ray alone kept trying for 10 minutes
    one_line(err, rc, 2, f"ray.address {address}: cannot reach a Ray cluster there (nothing listens there)")


def test_an_address_that_never_answers_ends_at_the_bound(refused: dict) -> None:
    address, proc = refused["silent"]
    rc, err = finished(proc, BOUND_S + BUILD_S)
    one_line(err, rc, 2, f"ray.address {address}: no answer within 3 s")


def test_the_probe_needs_a_node_of_the_cluster_on_this_host(ray_cluster: RayCluster) -> None:
    """The connection check a build runs before ray.init, in a process of its own: it joins with
    ray.init as the head's host, and not as a host where no node of the cluster runs (Ray waits
    for such a node for a minute; a build stops its probe at ray.connect_timeout_s, as this test
    does at 20 s). The address is given: on one machine, Ray would otherwise find the head's
    raylet through its socket file, which crosses network namespaces."""
    probes = {name: ray_cluster.start([sys.executable, "-m", "serwild.processes.raystart", ray_cluster.address,
                                       host.ip], host=host)
              for name, host in (("node", ray_cluster.head), ("no node", ray_cluster.client))}
    said = {}
    for name, proc in probes.items():
        try:
            said[name] = proc.communicate(timeout=20 if name == "no node" else BUILD_S)[0].strip().splitlines()[-1]
        except subprocess.TimeoutExpired:
            said[name] = "no answer"  # the fixture ends it, by its session
    assert said["node"] == "ok"
    assert said["no node"] == "no answer" or said["no node"].startswith("Ray could not join"), said


def _shard_being_written(out: Path, raylets: list[int]) -> tuple[int, str] | None:
    """(raylet PID, shard path) of a shard a worker of one of those raylets is writing now (the
    worker's temp file, ``.<name>.tmp-<worker pid>``, is there), if any."""
    temps = [(int(m.group(1)), t) for t in out.rglob(f".*{TMP_MARK}*") if (m := TEMP_NAME.match(t.name))]
    for raylet in raylets:
        workers = {pid for pid, _ in raylet_children(raylet)}
        for pid, temp in temps:
            if pid in workers:
                return raylet, str((temp.parent / temp.name[1:temp.name.rindex(TMP_MARK)]).relative_to(out))
    return None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_node_killed_mid_build_its_task_is_retried_on_the_others(
        ray_cluster: RayCluster, tiny_corpus: Path, tiny_build: Path, tmp_path: Path) -> None:
    """A worker node dies while it writes a shard: its raylet is killed, and its workers with it
    (a raylet killed alone leaves its busy worker running: it finishes the task and hands the
    result to the driver itself, which is no retry at all). Ray retries the task on the nodes
    left, the build finishes with the same bytes, and that shard was written by another node."""
    out = tmp_path / "shards"
    workers = {ray_cluster.raylet(h.ip): h.ip for h in ray_cluster.workers}
    proc = ray_cluster.start_build(build_args(tiny_corpus, out, f"ray.address={ray_cluster.address}"))
    deadline = time.monotonic() + BUILD_S
    while (writing := _shard_being_written(out, list(workers))) is None:  # mid-build, mid-shard on a worker node
        assert proc.poll() is None and time.monotonic() < deadline, "no worker node wrote a shard"
        time.sleep(0.02)
    raylet, shard = writing
    node = [raylet, *(pid for pid, _ in raylet_children(raylet))]
    for pid in node:
        os.kill(pid, signal.SIGKILL)
    rc, err = finished(proc, BUILD_S)
    assert rc == 0, err[-3000:]
    assert all(_gone(pid) for pid in node)
    assert shard_hashes(out) == shard_hashes(tiny_build)
    records = [json.loads(x) for x in (out / "build-log.jsonl").read_text().splitlines()]
    writer = [r["node"] for r in records if r.get("path") == shard]
    assert len(writer) == 1 and not writer[0].startswith(workers[raylet] + "/"), (shard, writer, workers[raylet])
    assert sum(per_node(out).values()) == len(shard_hashes(tiny_build))
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]  # the dead attempt's temp shard is gone
