"""A Ray cluster of separate hosts on this machine, started the way a user starts one, for the
cluster tests and ``benchmarks/bench_cluster.py``:

    with ray_cluster_on_hosts(workers=2, folder=Path("/tmp/swrayX")) as cluster:
        cluster.start_build(["--config", "…", f"ray.address={cluster.address}"]).wait()

Each node is a host of its own (:mod:`tests.cluster.hosts`: a network namespace with its own
address, as on separate machines): the head at 10.231.N.1, the workers at .2, .3, …, and one
more host with no Ray node (a client).
The nodes are ``ray start --head --node-ip-address=10.231.N.1 --port=6379 --num-cpus=1`` and
``ray start --address=10.231.N.1:6379 --node-ip-address=10.231.N.k --num-cpus=1`` (token
authentication on, each node's session folder its own), as docs/building.md tells a user.
Nothing here uses a Ray private API or a loopback address. At the end, however it went, every
process of each node's ``ray start`` session and of each driver is ended by PID, the namespaces
are removed and the folder too. Never ``ray stop``: other jobs on this machine run Ray too.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.hosts import Host, make_hosts, remove_hosts
from tests.faults import procs

PORT = 6379  # the head's GCS port: each host has its own network, so no other job's port is in the way
RAY = str(Path(sys.executable).with_name("ray"))
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Variables of the test's own process that must not steer a node or a driver the way a user's shell would not.
NOT_PASSED = (*AUTH_VARS, "RAY_ADDRESS", "RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@dataclass
class RayCluster:
    head: Host
    workers: list[Host]
    client: Host  # a host with no node of the cluster
    token_path: Path
    sessions: dict[str, int] = field(default_factory=dict)  # a node's IP → the session of its processes
    drivers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{PORT}"

    def raylet(self, ip: str) -> int:
        """The PID of the node's raylet (the one process of its session named so)."""
        return next(p for p in procs.session_pids(self.sessions[ip]) if _argv0(p).endswith("/raylet"))

    def driver_env(self, token: bool = True) -> dict[str, str]:
        """A user's shell on a host: the cluster's token (or none), nothing else of Ray's."""
        env = {k: v for k, v in procs.env().items() if k not in NOT_PASSED}
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def start(self, argv: list[str], host: Host | None = None, token: bool = True) -> subprocess.Popen:
        """``argv`` as a user runs it on ``host`` (the head's by default), in a session of its own
        (ended at the end)."""
        proc = subprocess.Popen((host or self.head).cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=procs.REPO, env=self.driver_env(token), start_new_session=True)
        self.drivers.append(proc)
        return proc

    def start_build(self, args: list[str], token: bool = True) -> subprocess.Popen:
        """``serwild build ARGS`` on the head's host."""
        return self.start([*procs.SERWILD, "build", *args], token=token)


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _ray_start(cluster: RayCluster, host: Host, folder: Path, *args: str) -> None:
    """``ray start … --node-ip-address=HOST`` on ``host``: it returns once the node runs; the
    node's processes stay in the session it was started in."""
    node_folder = folder / host.ip.rsplit(".", 1)[1]  # a short path: Ray's socket paths must fit in 107 bytes
    proc = subprocess.Popen(host.cmd(RAY, "start", *args, f"--node-ip-address={host.ip}", "--num-cpus=1",
                                     f"--temp-dir={node_folder}", "--disable-usage-stats"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cluster.driver_env(), start_new_session=True)
    cluster.sessions[host.ip] = proc.pid
    _, err = proc.communicate(timeout=180)  # three nodes starting on two busy cores
    if proc.returncode != 0:
        raise RuntimeError(f"ray start on {host.ip} failed ({proc.returncode}): {err[-2000:]}")


@contextlib.contextmanager
def ray_cluster_on_hosts(workers: int, folder: Path) -> Iterator[RayCluster]:
    """A head and ``workers`` worker nodes, each on a host of its own, and a client host (see the
    module's docstring); ``folder`` (short, made by the caller) holds the token and the nodes'
    session folders, and is removed at the end."""
    token_path = folder / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token_path.chmod(0o600)
    hosts = make_hosts(workers + 2)
    cluster = RayCluster(hosts[0], hosts[1:-1], hosts[-1], token_path)
    try:
        _ray_start(cluster, cluster.head, folder, "--head", f"--port={PORT}", "--include-dashboard=false")
        for h in cluster.workers:
            _ray_start(cluster, h, folder, f"--address={cluster.address}")
        yield cluster
    finally:
        for driver in cluster.drivers:
            procs.end_session(driver.pid)
            driver.wait()
        for sid in cluster.sessions.values():
            procs.end_session(sid)
        left = [p for sid in cluster.sessions.values() for p in procs.wait_session_gone(sid, 30)]
        remove_hosts(hosts)
        shutil.rmtree(folder, ignore_errors=True)
        assert left == [], procs.describe(left)
