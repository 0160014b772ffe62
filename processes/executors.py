"""Where the build's tasks run (:func:`open_executor`): ``serial``, every task in this process, in order, or
``ray``, one Ray task per item, on a Ray started for the build or a cluster joined for it
(:mod:`serwild.processes.raystart`). Ray is imported where it is used: a serial build never loads it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from serwild.errors import UsageError, disk_full_cause
from serwild.processes import raystart
from serwild.progress import progress

if TYPE_CHECKING:
    from serwild.processes.config import RayConfig

T = TypeVar("T")
Describe = Callable[[tuple], str]  # a task's arguments → what it works on, for its one-line error

SERIAL_NODE = "serial"  # the node name of a task run in this process
IN_FLIGHT_PER_CPU = 2  # Ray tasks in flight per cluster CPU: the CPUs stay busy, the driver's memory bounded
FINISH_WAIT_S = 60.0  # how long a failing map waits for its other tasks in flight


@dataclass(frozen=True)
class Finished(Generic[T]):
    """One task's result and where it ran: ``<node ip>/<first 8 hex of Ray's node id>`` on Ray
    (nodes on one machine share an IP), :data:`SERIAL_NODE` in this process."""

    result: T
    node: str


class Executor:
    """A context manager; inside it, :meth:`map`. Entering starts or joins what runs the tasks,
    leaving ends it."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        return None

    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str,
            describe: Describe | None = None) -> Iterator[Finished[T]]:
        """``fn(*args)`` for every ``args`` in ``items``, yielded as they finish (any order). A task
        that fails is one line: ``describe(args)`` (what it worked on), then what went wrong."""
        raise NotImplementedError


def open_executor(kind: str, ray_cfg: RayConfig, out: Path | None = None) -> Executor:
    """``serial`` or ``ray`` (local, or the cluster at ``ray_cfg.address``); ``out`` is the build
    folder, where a local Ray keeps its session."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "ray":
        return RayExecutor(ray_cfg, out)
    raise UsageError(f"unknown executor {kind!r} (ray | serial)")


class SerialExecutor(Executor):
    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str,
            describe: Describe | None = None) -> Iterator[Finished[T]]:
        with progress(len(items), desc, unit="task", command="build") as bar:
            for args in items:
                yield Finished(fn(*args), SERIAL_NODE)
                bar.update(1)


# ----------------------------------------------------------------------------- Ray


class RayExecutor(Executor):
    """One Ray task per item, at most :data:`IN_FLIGHT_PER_CPU` per cluster CPU in flight, results
    in completion order. A Ray already running in this process (a benchmark's) is used as it is
    and left running."""

    def __init__(self, ray_cfg: RayConfig, out: Path | None = None) -> None:
        self.cfg, self.out, self.started = ray_cfg, out, False
        self.session: Path | None = None  # a local Ray's session folder, removed at the end
        self.maps: list[Generator[Any, None, None]] = []  # handed out by map, closed before Ray stops

    def __enter__(self) -> RayExecutor:
        import ray

        if ray.is_initialized():
            return self
        # ray.init makes SIGTERM a bare sys.exit(15); keep ours (serwild.cli: one line, exit 143).
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if self.cfg.address:
                raystart.join_cluster(self.cfg.address, self.cfg.connect_timeout_s)
            else:
                self.session = raystart.start_local(self.cfg.num_cpus, self.out)
        finally:
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
        self.started = True
        return self

    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str,
            describe: Describe | None = None) -> Iterator[Finished[T]]:
        gen = _ray_map(fn, items, desc, describe)
        self.maps.append(gen)
        return gen

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        import ray

        # A map the caller left early (its error, SIGTERM) gets that exception: it winds its tasks down.
        for gen in self.maps:
            with contextlib.suppress(BaseException):
                if exc is not None:
                    gen.throw(exc)
                gen.close()
        if self.started:
            ray.shutdown()
        if self.session is not None:
            shutil.rmtree(self.session, ignore_errors=True)


def _on_node(fn: Callable[..., T], args: tuple) -> tuple[str, T]:
    """The Ray task: ``fn(*args)``, and the node it ran on."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}", fn(*args)


def _ray_map(fn: Callable[..., T], items: Sequence[tuple], desc: str,
             describe: Describe | None) -> Generator[Finished[T], None, None]:
    import ray

    # The task keeps fn's name: a worker's process title reads ray::build_shard, not ray::_on_node.
    remote = ray.remote(num_cpus=1, max_retries=2)(_on_node).options(name=getattr(fn, "__name__", "task"))
    limit = max(2, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []
    args_of: dict[Any, tuple] = {}  # task ref → its arguments, to name what failed
    queue = list(items)
    try:
        with progress(len(items), desc, unit="task", command="build") as bar:
            while queue or pending:
                while queue and len(pending) < limit:
                    args = queue.pop(0)
                    pending.append(ref := remote.remote(fn, args))
                    args_of[ref] = args
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    node, result = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the task raised, or its worker died (crash, OOM kill)
                    full = disk_full_cause(e)
                    if full is not None:  # the CLI's "no space left on device writing <file>", as without Ray
                        raise full from None
                    what = describe(args_of[ready[0]]) if describe else "a Ray task"
                    raise UsageError(f"{what}: {_ray_reason(e)}") from None
                del args_of[ready[0]]
                yield Finished(result, node)
                bar.update(1)
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):  # Ctrl-C, SIGTERM: stop now (ray.shutdown ends the tasks)
            _finish_tasks(pending)
        raise


def _finish_tasks(pending: list) -> None:
    """Let the tasks in flight end (up to FINISH_WAIT_S) once one has failed: a task that ends
    removes its own temp shard (:func:`serwild.processes.atomic.atomic_write`). Not cancelled: Ray cancels
    with a KeyboardInterrupt, which can land in a native callback (numba's) and crash the worker
    loudly. Results are fetched, or Ray reports each one nobody fetched as an error of its own."""
    import ray

    if not pending or not ray.is_initialized():
        return
    with contextlib.suppress(Exception):
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=FINISH_WAIT_S)
        for ref in ready:
            with contextlib.suppress(Exception):
                ray.get(ref)


def _ray_reason(e: BaseException) -> str:
    """The first line of what went wrong: the task's own exception, or Ray's word on the worker."""
    import ray

    cause = getattr(e, "cause", None)
    if isinstance(e, ray.exceptions.RayTaskError) and cause is not None:
        text = str(cause).strip().splitlines()
        return f"the task raised {type(cause).__name__}" + (f": {text[0][:200]}" if text else "")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__} after Ray's retries" + (f" ({text[0][:200]})" if text else "")
