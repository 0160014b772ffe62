"""A real multi-node Ray cluster on loopback, shared by the tests of a module.

:func:`ray_cluster` starts ``tests.cluster.raycluster`` (a head and two worker nodes: separate
raylets with one CPU each, every node at 127.0.0.1, token authentication on with a token made
for this cluster) in a session of its own, and at the end, however the tests went, ends every
process of that session by PID and removes Ray's folder. Never `ray stop`: other jobs on this
machine run Ray too.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults import procs

WORKERS = 2
START_S = 180  # three nodes starting on two busy cores
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# Variables of the test's own process that must not steer a driver the way a user's shell would not.
NOT_PASSED = (*AUTH_VARS, "RAY_ADDRESS", "RAY_TMPDIR", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@dataclass
class RayCluster:
    address: str
    nodes: list[dict]  # {"id": node id (hex), "raylet": its raylet's PID, "head": bool}
    token_path: Path
    sid: int  # the session of every process of the cluster
    drivers: list[subprocess.Popen] = field(default_factory=list)

    def driver_env(self, token: bool = True) -> dict[str, str]:
        """A user's shell on a node: the cluster's token (or none), nothing else of Ray's."""
        env = {k: v for k, v in procs.env().items() if k not in NOT_PASSED}
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return env

    def start_build(self, args: list[str], token: bool = True) -> subprocess.Popen:
        """``serwild build ARGS`` as a user runs it on a node, in a session of its own (ended at the end)."""
        proc = subprocess.Popen([*procs.SERWILD, "build", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=procs.REPO, env=self.driver_env(token), start_new_session=True)
        self.drivers.append(proc)
        return proc


def _first_line(proc: subprocess.Popen, seconds: float) -> str:
    """The first line ``proc`` prints, waiting at most ``seconds``; "" if none came."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        return proc.stdout.readline() if sel.select(timeout=seconds) else ""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # A short folder of its own: Ray's socket paths under it must fit in 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="swray", dir="/tmp"))
    token_path = folder / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token_path.chmod(0o600)
    env = {k: v for k, v in procs.env().items() if k not in NOT_PASSED}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_TMPDIR=str(folder),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.Popen([sys.executable, "-m", "tests.cluster.raycluster", str(procs.free_port()), str(WORKERS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=procs.REPO, env=env, start_new_session=True)
    cluster = None
    try:
        line = _first_line(proc, START_S)
        assert line, f"the cluster did not start within {START_S} s (status {proc.poll()})"
        info = json.loads(line)
        cluster = RayCluster(info["address"], info["nodes"], token_path, proc.pid)
        yield cluster
    finally:
        for driver in cluster.drivers if cluster else []:
            procs.end_session(driver.pid)
            driver.wait()
        procs.end_session(proc.pid)
        proc.wait()
        left = procs.wait_session_gone(proc.pid, 30)
        shutil.rmtree(folder, ignore_errors=True)
        assert left == [], procs.describe(left)


def raylet_children(raylet: int) -> list[tuple[int, bytes]]:
    """(PID, command line) of the processes a raylet started (its workers, its agents)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == raylet:
                out.append((int(d), Path(f"/proc/{d}/cmdline").read_bytes()))
        except (OSError, IndexError, ValueError):
            continue
    return out
