"""Helpers for the fault tests: real processes, their sessions, real full disks.

Every process a test starts gets its own session (``start_new_session=True``), so what it
leaves behind can be found by session id and ended by PID, and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from serwild.progress import LOG_LINE

REPO = Path(__file__).resolve().parents[2]
SERWILD = [sys.executable, "-m", "serwild"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def start(cmd: list[str], preexec_fn: Callable[[], None] | None = None, **extra_env: str) -> subprocess.Popen:
    """``cmd`` in a new session, output captured as text."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True, env=env(**extra_env), preexec_fn=preexec_fn)


def session_pids(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.getsid(int(d)) != sid:
                continue
            state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.append(int(d))
    return pids


def pids_running(needle: str) -> list[int]:
    """Live processes whose command line contains ``needle`` (a test's own tmp path): torchrun's
    ranks live in sessions of their own, so they are found this way."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            with contextlib.suppress(OSError):
                if needle.encode() in Path(f"/proc/{d}/cmdline").read_bytes() and \
                        Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(d))
    return pids


def wait_gone(needle: str, seconds: float) -> list[int]:
    """Wait up to ``seconds`` until no process mentions ``needle``; those still running."""
    return _wait_empty(lambda: pids_running(needle), seconds)


def _wait_empty(pids: Callable[[], list[int]], seconds: float) -> list[int]:
    """Poll ``pids`` every 0.5 s for up to ``seconds`` until it is empty; its last answer."""
    deadline = time.monotonic() + seconds
    while (left := pids()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def describe(pids: list[int]) -> list[str]:
    out = []
    for p in pids:
        with contextlib.suppress(OSError):
            out.append(f"{p}: {Path(f'/proc/{p}/cmdline').read_text().replace(chr(0), ' ')[:100]}")
    return out


def wait_session_gone(sid: int, seconds: float, but: tuple[str, ...] = ()) -> list[int]:
    """Wait up to ``seconds`` for session ``sid`` to have no process but orphans whose command
    line starts with one of ``but`` (their parent gone); what is left besides them."""
    return _wait_empty(lambda: [p for p in session_pids(sid) if not _orphan_of(p, but)], seconds)


def _orphan_of(pid: int, names: tuple[str, ...]) -> bool:
    """``pid`` runs one of ``names`` and its raylet (its parent) is gone."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        parent = Path(f"/proc/{ppid}/cmdline").read_text()
    except (OSError, ValueError, IndexError):
        return True  # gone meanwhile
    return cmd.startswith(names) and "raylet" not in parent


def end_session(sid: int) -> None:
    """SIGKILL what is left of a session we started, PID by PID."""
    for p in session_pids(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


@contextlib.contextmanager
def session(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``proc`` (started by :func:`start`); on the way out, nothing of its session survives."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=30)
        end_session(proc.pid)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def lines(err: str) -> list[str]:
    """Non-empty stderr lines as a terminal shows them (progress-bar frames overwrite each other),
    less the progress lines a non-terminal gets instead of bars (serwild.progress)."""
    return [seg for x in err.split("\n") if (seg := x.split("\r")[-1].strip()) and not LOG_LINE.match(seg)]


PROGRESS = re.compile(r"\d+%\|.*\| \d+/\d+ \[")  # a tqdm frame, which a pipe receives line by line


def one_line(err: str, rc: int, expect_rc: int = 2, *needles: str) -> str:
    """The single line a terminal shows of a failed command's stderr (no traceback, progress
    left out), which must name every needle; the exit status must be ``expect_rc``."""
    said = [x for x in lines(err) if not PROGRESS.search(x)]
    assert rc == expect_rc and "Traceback" not in err, (rc, err[-3000:])
    assert len(said) == 1, err[-3000:]
    for n in needles:
        assert n in said[0], (n, said[0])
    return said[0]


def dead_pid() -> int:
    """The PID of a process that has ended (reaped): no process has it now."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def hold_lock(folder: Path) -> subprocess.Popen:
    """A real second process holding ``folder``'s serwild lock until killed."""
    code = ("import sys, time; from serwild.processes import lock; lock.acquire(sys.argv[1], 'test holder'); "
            "print('held', flush=True); time.sleep(600)")
    proc = start([sys.executable, "-c", code, str(folder)])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.communicate()
    return proc


@contextlib.contextmanager
def full_disk(where: Path, size: str) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A real small file system (a tmpfs of ``size``, e.g. "2m") mounted at ``where``, unmounted
    afterwards. Where mounting is not allowed (not root), the fault is a file size limit
    (RLIMIT_FSIZE) applied in the child instead, which fails writes with EFBIG: yields the
    folder and the child's preexec_fn (None with the tmpfs)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True).returncode == 0
    if mounted:
        try:
            yield where, None
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)
        return
    limit = int(size.rstrip("mk")) * (1024 if size.endswith("k") else 1024 * 1024)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    yield where, limit_file_size


def lines_until(proc: subprocess.Popen, needle: str, seconds: float) -> tuple[list[str], threading.Thread]:
    """Read ``proc``'s stderr on a thread into the returned list; return once a line holds
    ``needle`` (or the process ended, or ``seconds`` passed: the caller checks which)."""
    err: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if needle in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + seconds
    while not seen.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
        pass
    return err, reader
