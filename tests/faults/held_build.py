"""``serwild build`` that stops after its N-th shard, for tests that kill a build mid-way.

    python -m tests.faults.held_build N [serwild build arguments …]

The real command (``serwild.cli.main``: its lock, its SIGTERM line and exit status, Ray and its
watchdog), with one change made here, not in the library: the executor the build opens is
wrapped so that, once N shards are logged, the driver prints ``held after N shard(s)`` and
waits to be signalled (as if the next shard were slow). A test then kills it at a point it
chose, every time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from serwild.cli import main
from serwild.processes import executors

HELD = "held after {n} shard(s)"


class Held(executors.Executor):
    def __init__(self, inner: executors.Executor, after: int) -> None:
        self.inner, self.after = inner, after

    def __enter__(self) -> Held:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], desc: str,
            describe: executors.Describe | None = None) -> Iterator[executors.Finished]:
        for n, finished in enumerate(self.inner.map(fn, items, desc, describe), start=1):
            yield finished  # the build logs this shard before it asks for the next
            if desc == "build shards" and n == self.after:
                print(HELD.format(n=n), file=sys.stderr, flush=True)
                while True:
                    time.sleep(1)


def run(after: int, argv: list[str]) -> int:
    real = executors.open_executor

    def held(kind: str, ray_cfg: Any, out: Path | None = None) -> executors.Executor:
        return Held(real(kind, ray_cfg, out), after)

    executors.open_executor = held  # type: ignore[assignment]  # this process only
    return main(["build", *argv])


if __name__ == "__main__":
    raise SystemExit(run(int(sys.argv[1]), sys.argv[2:]))
