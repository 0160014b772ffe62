"""Where the build's tasks run, behind one small interface: :func:`open_executor` gives an
:class:`Executor`, whose ``map(fn, items, desc)`` yields one :class:`Finished` per item (its
result, and the node that ran it) as tasks finish, with a progress bar.

- ``serial``: every task in this process, in order (debugging, tiny corpora).
- ``ray`` without ``ray.address``: a Ray started for this build on this machine (``ray.num_cpus``
  CPUs, node address 127.0.0.1, Ray's token authentication on), its session folder kept apart
  and removed, and stopped at the end.
- ``ray`` with ``ray.address`` (``HOST:PORT`` or ``auto``): a running Ray cluster, joined for the
  build and left at the end. Joining is bounded (``ray.connect_timeout_s``): a cluster that is not
  there, refuses this driver's token, or has no node on this machine is one line naming the
  address, checked by a probe in a child process (Ray's own connection code retries for minutes
  and logs from C++ straight to stderr; a child can be stopped and its noise kept).

Process supervision is here as well: the watchdog that ends a local Ray's leftovers when the
driver dies however it dies, and the clean-up of the temp shards of failed tasks. This module is
also the watchdog's and the probe's program (``python -m serwild.builder.executors``), so Ray is
imported inside the functions that use it: those two start in milliseconds, without Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from serwild import atomic
from serwild.errors import UsageError
from serwild.progress import progress

if TYPE_CHECKING:
    from serwild.builder.config import RayConfig

T = TypeVar("T")
Describe = Callable[[tuple], str]  # a task's arguments → what it works on, for its one-line error

SERIAL_NODE = "serial"  # the node name of a task run in this process
IN_FLIGHT_PER_CPU = 2  # Ray tasks in flight per cluster CPU: the CPUs stay busy, the driver's memory bounded
FINISH_WAIT_S = 60.0  # how long a failing map waits for its other tasks in flight
WORKER_EXIT_WAIT_S = 10.0  # how long a failed build waits for its workers to be gone


@dataclass(frozen=True)
class Finished(Generic[T]):
    """One task's result and where it ran: ``<node ip>/<first 8 hex of Ray's node id>`` on Ray
    (nodes on one machine share an IP), :data:`SERIAL_NODE` in this process."""

    result: T
    node: str


class Executor:
    """A context manager; inside it, :meth:`map`. Entering starts or joins what runs the tasks,
    leaving ends it (and, after a failure, removes what failed tasks left half-written)."""

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
    folder, where a local Ray keeps its session and where failed tasks' temp shards are removed."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "ray":
        return RayExecutor(ray_cfg, out)
    raise UsageError(f"unknown executor {kind!r} (ray | serial)")


def _progress(total: int, desc: str) -> Any:
    # a bar on a terminal, whole lines in a log (serwild.progress)
    return progress(total, desc, unit="task", command="build")


class SerialExecutor(Executor):
    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str,
            describe: Describe | None = None) -> Iterator[Finished[T]]:
        with _progress(len(items), desc) as bar:
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
        self.watchdog: subprocess.Popen | None = None
        self.ray_tmp: Path | None = None
        self.maps: list[Generator[Any, None, None]] = []  # handed out by map, closed before Ray stops

    def __enter__(self) -> RayExecutor:
        import ray

        if ray.is_initialized():
            return self
        # ray.init makes SIGTERM a bare sys.exit(15); keep ours (serwild.cli: one line, exit 143).
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if self.cfg.address:
                join_cluster(self.cfg.address, self.cfg.connect_timeout_s)
            else:
                self._start_local()
        finally:
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)
        self.started = True
        if not self.cfg.address:
            self.watchdog = _start_watchdog(self.ray_tmp)
        return self

    def _start_local(self) -> None:
        import ray

        kwargs: dict[str, Any] = {}
        self.ray_tmp = ray_temp_dir(self.out)
        if self.ray_tmp is not None:
            kwargs["_temp_dir"] = str(self.ray_tmp)
        try:
            with loopback_kept():
                ray.init(num_cpus=self.cfg.num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False,
                         logging_level="ERROR", log_to_driver=True, **kwargs)
        except BaseException:
            self._remove_ray_tmp()
            raise

    def map(self, fn: Callable[..., T], items: Sequence[tuple], desc: str,
            describe: Describe | None = None) -> Iterator[Finished[T]]:
        gen = _ray_map(fn, items, desc, describe)
        self.maps.append(gen)
        return gen

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        import ray

        # A map the caller left early (its own error, SIGTERM) gets that exception at its yield,
        # so it winds its tasks down as if it had failed itself.
        for gen in self.maps:
            with contextlib.suppress(BaseException):
                if exc is not None:
                    gen.throw(exc)
                gen.close()
        if self.started:
            ray.shutdown()
        if self.watchdog is not None:  # ends what ray.shutdown left (agents still reporting to the GCS)
            assert self.watchdog.stdin is not None
            self.watchdog.stdin.close()
            self.watchdog.wait()
        self._remove_ray_tmp()
        if exc_type is not None and self.started and self.out is not None:
            remove_worker_temps(self.out)

    def _remove_ray_tmp(self) -> None:
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            self.ray_tmp = None


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
        with _progress(len(items), desc) as bar:
            while queue or pending:
                while queue and len(pending) < limit:
                    args = queue.pop(0)
                    pending.append(ref := remote.remote(fn, args))
                    args_of[ref] = args
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    node, result = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # the task raised, or its worker died (crash, OOM kill)
                    full = atomic.disk_full_cause(e)
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
    """Let the tasks still in flight end (for up to FINISH_WAIT_S) when one has failed (a full
    disk, a bad file): killed mid-write by the driver's exit, they would leave their temp
    shards behind, while a task that ends removes its own (:func:`serwild.atomic.atomic_write`).
    Not cancelled: Ray cancels with a KeyboardInterrupt, which can land inside a native
    callback (numba's compiler) and crash the worker loudly. Their results are fetched, or Ray
    reports each failure nobody fetched as an error of its own. Those still running after the
    wait die with Ray, and :func:`remove_worker_temps` removes what they were writing."""
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


# ----------------------------------------------------------------------------- joining a cluster

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def loopback_kept() -> Iterator[None]:
    """While Ray starts or joins: keep 127.0.0.1 as it is. Ray's ``resolve_ip_for_localhost``
    rewrites a loopback address (the cluster's, and ``_node_ip_address``) to this machine's network
    address whenever ``ray_constants.ENABLE_RAY_CLUSTER`` holds, as it does on Linux; on macOS and
    Windows it does not, and 127.0.0.1 stays. A cluster whose nodes listen on 127.0.0.1 is then
    dialled where nothing listens (Ray retried for 10 minutes), and a local Ray would listen on the
    network. Ray reads the switch at each call, so it is turned off around ``ray.init`` only and
    put back (its environment variable, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, is read once at import)."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # another Ray: it decides
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` (``[v6]:PORT`` too); one line naming it if it is not that."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"ray.address {address!r}: expected HOST:PORT (the head node's `ray start --head "
                         "--port`) or auto")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """A host Ray would rewrite to the machine's network address (and we keep at 127.0.0.1)."""
    return host in (LOOPBACK, "localhost")


def cluster_address(address: str) -> str:
    """``HOST:PORT`` of the cluster ``ray.address`` names; ``auto``: the one Ray finds (the
    RAY_ADDRESS variable, else the last `ray start` on this machine)."""
    if address != "auto":
        return address  # checked with the config (RayConfig)
    from ray._private.services import get_ray_address_from_environment

    try:
        found = str(get_ray_address_from_environment("auto", None) or "")
    except ConnectionError:
        found = ""
    if not found:
        raise UsageError("ray.address=auto: no running Ray cluster found on this machine (start one with "
                         "`ray start`, or set ray.address=HEAD:PORT)")
    if "://" in found:  # RAY_ADDRESS=ray://…: Ray Client
        raise UsageError(f"ray.address=auto found {found}: Ray Client is not supported; run serwild build on a "
                         "node of the cluster (the driver writes the build folder)")
    return found


def join_cluster(address: str, timeout_s: float) -> None:
    """``ray.init`` on the cluster at ``address``, after checks bounded by ``timeout_s`` in all:
    something listens there (a TCP connect), it is a Ray cluster that accepts this driver's token
    and has a node on this machine (:func:`probe`). Each failure is one line naming the address."""
    import ray

    target = cluster_address(address)
    host, port = split_address(target)
    deadline = time.monotonic() + timeout_s
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = "nothing listens there" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
        raise UsageError(f"ray.address {target}: cannot reach a Ray cluster there ({reason})") from None
    loopback = is_loopback(host)
    said = run_probe(target, deadline - time.monotonic(), timeout_s, LOOPBACK if loopback else None)
    if said:
        raise UsageError(f"ray.address {target}: {said}")
    try:
        with loopback_kept() if loopback else contextlib.nullcontext():
            ray.init(address=target, _node_ip_address=LOOPBACK if loopback else None, logging_level="ERROR",
                     log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"ray.address {target}: Ray could not join the cluster ({first})") from None


def run_probe(address: str, left_s: float, bound_s: float, node_ip: str | None) -> str:
    """Run :func:`probe` in a child process, stopped after ``left_s`` (what is left of the bound,
    ``bound_s``): "" when the cluster answered as needed, else what is wrong (for the one line)."""
    cmd = [sys.executable, "-m", "serwild.builder.executors", "probe", address, node_ip or "", str(bound_s)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(0.1, left_s), check=False)
    except subprocess.TimeoutExpired:  # run() has killed the child by then
        return f"no answer within {bound_s:g} s (ray.connect_timeout_s; is it the head's GCS port?)"
    try:
        return str(json.loads(done.stdout.strip().splitlines()[-1])["problem"])
    except (IndexError, ValueError, KeyError, TypeError):
        return f"the connection check failed (exit status {done.returncode})"


def probe(address: str, node_ip: str | None, timeout_s: float) -> str:
    """In the probe's process: "" if the GCS at ``address`` answers with this process's token
    (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, as ``ray.init`` will use) and one of its live nodes is a
    raylet on this machine (with address ``node_ip``, when given), which ``ray.init`` needs; else
    what is wrong."""
    from ray._private.services import find_node_ids
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.exceptions import AuthenticationError

    try:
        nodes = GcsClient(address=address).get_all_node_info(timeout=timeout_s)
    except AuthenticationError:
        return ("the cluster refused this driver's token (give it the cluster's token: RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN_PATH=<file>, or the file at ~/.ray/auth_token)")
    except Exception as e:  # noqa: BLE001 - any failure here is the one line, not a traceback
        return f"not a Ray cluster that answers ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"
    alive = {n.hex(): info for n, info in nodes.items() if info.state == GcsNodeInfo.GcsNodeState.ALIVE}
    here = [i for i in find_node_ids() if i in alive and (not node_ip or alive[i].node_manager_address == node_ip)]
    if not here:
        return (f"none of its {len(alive)} live node(s) runs on this machine: run `ray start --address={address}` "
                "here first, or run serwild build on a node of the cluster")
    return ""


# ----------------------------------------------------------------------------- a local Ray's folders

# Ray's longest unix socket path is <temp>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store.N,
# and such a path must fit in 107 bytes (sun_path): the session part takes up to 66 of them.
SOCKET_PATH_MAX = 107
RAY_SESSION_ROOM = 66
RAY_TMP_IN_BUILD = ".ray-"  # + 8 random characters (tempfile.mkdtemp)
RAY_TMP_ELSEWHERE = "serwild-ray-"


def ray_temp_dir(out: Path | None) -> Path | None:
    """A new folder for a local Ray's session: under ``out`` when the socket paths fit, else
    under the temp folder or /tmp; None (Ray's default) if none can be made. Called under the
    build folder's lock, so a ``.ray-*`` folder already in ``out`` is a crashed build's: removed."""
    candidates = []
    if out is not None:
        for stale in out.glob(RAY_TMP_IN_BUILD + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        candidates.append((out.resolve(), RAY_TMP_IN_BUILD))
    candidates += [(Path(tempfile.gettempdir()).resolve(), RAY_TMP_ELSEWHERE), (Path("/tmp"), RAY_TMP_ELSEWHERE)]
    for parent, prefix in candidates:
        if len(os.fsencode(parent)) + 1 + len(prefix) + 8 + RAY_SESSION_ROOM > SOCKET_PATH_MAX:
            continue
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        except OSError:
            continue
    return None


def remove_worker_temps(out: Path, wait_s: float = WORKER_EXIT_WAIT_S) -> list[Path]:
    """Remove the temp shards (``.<name>.tmp-<pid>``) that tasks left under the build folder, once
    their writers are gone (up to ``wait_s``; then regardless: under the folder's lock no other
    writer exists, and a worker still alive has no task left). After a failed build, and after a
    finished one with ``wait_s=0`` (an attempt killed with its node leaves one; its retry wrote
    the shard). The removed paths. A writer's PID is checked on this machine only: one on another
    node looks gone, which is right once the map is over."""
    deadline = time.monotonic() + wait_s
    removed: list[Path] = []
    while True:
        late = time.monotonic() >= deadline
        alive = False
        for p in _shard_temps(out):
            if late or atomic.is_stale_temp(p):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
            else:
                alive = True
        if not alive:
            return removed
        time.sleep(0.1)


def _shard_temps(out: Path) -> list[Path]:
    """Temp files under the build's dataset folders (where shard tasks write): every folder of the
    build that is not hidden (Ray's own, .ray-*, is removed as a whole)."""
    subs = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")] if out.is_dir() else []
    return [p for sub in subs for p in sub.rglob(".*") if atomic.TEMP_NAME.match(p.name)]


# ----------------------------------------------------------------------------- the watchdog

# A local Ray must not outlive a driver killed with SIGKILL. Its gcs, raylet and workers die with
# the driver (Ray asks the kernel for that), but the dashboard and runtime-env agents first try to
# tell the dead GCS, for 60 s (hard-coded in Ray). The watchdog (this module run with `watchdog`),
# started after ray.init with the driver's Ray descendants (PID and start time, so a reused PID is
# never hit), waits for EOF on a pipe only the driver holds (its exit, however it exits, or the end
# of RayExecutor.__exit__) and then SIGKILLs those still running. It then removes Ray's session
# folder, which a driver killed with SIGKILL cannot.


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent PID, start time) of a process, from /proc; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _is_ray(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return cmd.startswith(b"ray::") or b"/ray/" in cmd


def ray_descendants(root: int) -> list[tuple[int, str]]:
    """(PID, start time) of the Ray processes started by ``root`` and of all their descendants
    (``root``'s other children, a test's say, are left out)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := _proc_stat(int(d))):
            children.setdefault(st[0], []).append((int(d), st[1]))
    found: list[tuple[int, str]] = []
    todo = [kid for kid in children.get(root, []) if _is_ray(kid[0])]
    while todo:
        kid = todo.pop()
        found.append(kid)
        todo.extend(children.get(kid[0], []))
    return found


def _start_watchdog(ray_tmp: Path | None) -> subprocess.Popen | None:
    if not Path("/proc/self/stat").is_file():
        return None  # no /proc (not Linux): no watchdog
    found = [f"{pid}:{start}" for pid, start in ray_descendants(os.getpid())]
    # Its own session: a Ctrl-C meant for the build must not end the watchdog first.
    return subprocess.Popen([sys.executable, "-m", "serwild.builder.executors", "watchdog", str(ray_tmp or ""),
                             *found], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)


def watchdog(ray_tmp: str, processes: list[str]) -> None:
    """The watchdog's process: wait for EOF on stdin, then SIGKILL each ``PID:start`` still the
    same process, and remove ``ray_tmp`` ("" for none)."""
    sys.stdin.read()
    for item in processes:
        pid, started = item.split(":")
        st = _proc_stat(int(pid))
        if st is not None and st[1] == started:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    if ray_tmp:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    """``watchdog RAY_TMP PID:START …`` or ``probe ADDRESS NODE_IP TIMEOUT_S`` (prints {"problem": …})."""
    if argv[:1] == ["watchdog"]:
        watchdog(argv[1], argv[2:])
        return 0
    if argv[:1] == ["probe"] and len(argv) == 4:
        print(json.dumps({"problem": probe(argv[1], argv[2] or None, float(argv[3]))}), flush=True)
        return 0
    print("usage: python -m serwild.builder.executors watchdog RAY_TMP [PID:START …] | probe ADDRESS NODE_IP "
          "TIMEOUT_S", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
