"""A real multi-node Ray cluster, each node a host of its own (a network namespace with its own
address), shared by the tests of a module: :mod:`tests.cluster.raycluster`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.raycluster import RayCluster, ray_cluster_on_hosts

WORKERS = 2


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # A short folder of its own: Ray's socket paths under it must fit in 107 bytes.
    with ray_cluster_on_hosts(WORKERS, Path(tempfile.mkdtemp(prefix="swray", dir="/tmp"))) as cluster:
        yield cluster


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
