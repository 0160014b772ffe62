"""Starting a Ray for one build (:func:`start_local`: on 127.0.0.1, its session folder in the build folder) or
joining a running cluster (:func:`join_cluster`, bounded by ``ray.connect_timeout_s``), with Ray's public
``ray.init``; clusters: docs/building.md. Ray owns its processes: ``ray.shutdown`` ends them, and those of a driver
killed with SIGKILL end by themselves. This module is also the connection probe's program
(``python -m serwild.processes.raystart ADDRESS NODE_IP``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serwild.errors import UsageError
from serwild.processes import atomic


def start_local(num_cpus: int | None, out: Path | None) -> Path | None:
    """``ray.init`` of a Ray for this build; its session folder (None: Ray's default), which the
    caller removes after ``ray.shutdown``."""
    import ray

    session = session_folder(out)
    try:
        with loopback_pinned():
            ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=True, _temp_dir=str(session) if session else None)
    except BaseException:
        if session is not None:
            shutil.rmtree(session, ignore_errors=True)
        raise
    return session


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def loopback_pinned() -> Iterator[None]:
    """While Ray starts or joins: keep 127.0.0.1 as it is. The one use of a Ray private API in
    serwild, because Ray offers no public switch: its ``resolve_ip_for_localhost`` rewrites a
    loopback address to this machine's network address whenever
    ``ray_constants.ENABLE_RAY_CLUSTER`` holds (on Linux; not on macOS or Windows), so a local
    Ray would listen on the network and a cluster on 127.0.0.1 would be dialled where nothing
    listens. Ray reads the switch at each call, so it is turned off around ``ray.init`` only.
    ``tests/builder/test_build.py`` fails loudly when an upgrade of Ray moves it."""
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


def join_cluster(address: str, timeout_s: float) -> None:
    """``ray.init(address=…)``, once :func:`probe` (in a child process, stopped after
    ``timeout_s``: Ray's own connection code retries for minutes and logs from C++ to stderr) has
    joined from there. ``HOST:PORT`` is checked with a TCP connect first. Each failure is one
    line naming the address."""
    import ray

    if address == "auto" and os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        raise UsageError("ray.address=auto found RAY_ADDRESS=ray://…: Ray Client is not supported; run serwild "
                         "build on a node of the cluster (the driver writes the build folder)")
    host = address.rpartition(":")[0].strip("[]")
    if address != "auto":
        try:
            socket.create_connection((host, int(address.rpartition(":")[2])), timeout=timeout_s).close()
        except OSError as e:
            why = "nothing listens there" if isinstance(e, ConnectionRefusedError) else (e.strerror or str(e))
            raise UsageError(f"ray.address {address}: cannot reach a Ray cluster there ({why})") from None
    node_ip = LOOPBACK if host in (LOOPBACK, "localhost") else None
    cmd = [sys.executable, "-m", "serwild.processes.raystart", address, node_ip or ""]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        said = (done.stdout.strip().splitlines() or [f"the connection check failed ({done.returncode})"])[-1]
    except subprocess.TimeoutExpired:  # run() has killed the child by then
        said = (f"no answer within {timeout_s:g} s (ray.connect_timeout_s): is it the head's GCS port, and does a "
                f"node of the cluster run on this machine (`ray start --address={address}`)?")
    if said != "ok":
        raise UsageError(f"ray.address {address}: {said}")
    with loopback_pinned() if node_ip else contextlib.nullcontext():
        ray.init(address=address, _node_ip_address=node_ip, logging_level="ERROR", log_to_driver=True)


def probe(address: str, node_ip: str | None) -> str:
    """In the probe's process: "ok" once ``ray.init`` joined the cluster at ``address`` with this
    process's token (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH) from this machine, else what is wrong."""
    import ray

    try:
        with loopback_pinned() if node_ip else contextlib.nullcontext():
            ray.init(address=address, _node_ip_address=node_ip, logging_level="ERROR", log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - any failure here is the one line, not a traceback
        chain = [e]  # ray.init says "Failed to connect", from the reason
        while chain[-1].__cause__ is not None and len(chain) < 8:
            chain.append(chain[-1].__cause__)
        # Ray's "Failed to connect to GCS" carries its last attempt's traceback as text.
        if any(isinstance(x, ray.exceptions.AuthenticationError) or "AuthenticationError" in str(x) for x in chain):
            return ("the cluster refused this driver's token (give it the cluster's token: RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN_PATH=<file>, or the file at ~/.ray/auth_token)")
        why = chain[-1]
        return f"Ray could not join ({type(why).__name__}: {(str(why).strip().splitlines() or [''])[0][:200]})"
    ray.shutdown()
    return "ok"


# Ray's longest unix socket path is <session folder>/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store.N
# and must fit in 107 bytes (sun_path): the session part takes up to 66 of them.
SESSION_ROOM = 107 - 66


ELSEWHERE = "serwild-ray-"  # + the driver's PID + "-" + random: a session folder under /tmp


def session_folder(out: Path | None) -> Path | None:
    """A new folder for a local Ray's session: ``.ray-*`` in the build folder (a crashed build's
    is removed: this runs under the folder's lock), or ``serwild-ray-<pid>-*`` under /tmp where
    the socket paths would not fit there (one whose driver is dead is removed); None (Ray's
    default) if none can be made."""
    if out is not None:
        for stale in out.glob(".ray-*"):
            shutil.rmtree(stale, ignore_errors=True)
    for stale in Path("/tmp").glob(ELSEWHERE + "*"):  # a driver killed with SIGKILL cannot remove its own
        pid = stale.name[len(ELSEWHERE):].split("-")[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and not atomic.pid_alive(int(pid)) and stale.stat().st_uid == os.getuid():
                shutil.rmtree(stale, ignore_errors=True)
    if out is not None and len(os.fsencode(out.resolve())) + len("/.ray-12345678") <= SESSION_ROOM:
        with contextlib.suppress(OSError):
            return Path(tempfile.mkdtemp(prefix=".ray-", dir=out.resolve()))
    with contextlib.suppress(OSError):
        return Path(tempfile.mkdtemp(prefix=f"{ELSEWHERE}{os.getpid()}-", dir="/tmp"))
    return None


if __name__ == "__main__":  # the probe: python -m serwild.processes.raystart ADDRESS NODE_IP
    print(probe(sys.argv[1], sys.argv[2] or None), flush=True)
