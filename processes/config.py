"""The ``ray:`` config section: where a build's tasks run (composed into :class:`serwild.config.Config`;
a leaf module, importing only :mod:`serwild.bounds`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from serwild.bounds import check_range

RAY_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}")  # HOST:PORT, [v6]:PORT


@dataclass(frozen=True)
class RayConfig:
    # None: start a local Ray for the build; "HOST:PORT" (the head's `ray start --head --port`) or "auto"
    # (RAY_ADDRESS, else the last `ray start` here): join that cluster, from one of its nodes
    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None: all cores; else 1..4096 (0 would never run a task)
    # Joining a cluster (ray.address) gives up after this, with one line: long enough for a busy head
    # node, short enough that a wrong address is an answer, not a wait (Ray alone retried for 10 min); 1..600
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.num_cpus is not None:
            check_range("ray.num_cpus", self.num_cpus, 1, 4096)
        check_range("ray.connect_timeout_s", self.connect_timeout_s, 1, 600)
        if self.address is not None and self.address != "auto" and not RAY_ADDRESS.fullmatch(self.address):
            # Ray Client (ray://) is refused too: the driver writes the build folder, so it runs on a node.
            raise ValueError(f"config key 'ray.address' must be HOST:PORT (the head's `ray start --head --port`) "
                             f"or auto, got {self.address!r}")
