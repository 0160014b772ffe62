"""Folder locks: one writer at a time per build folder and per run folder.

A writer holds an exclusive ``fcntl.flock`` on ``<folder>/.serwild.processes.lock``, and the file says
who it is (PID and command), so a second writer is refused at once with a line naming the
folder and the holder.

Stale locks need no special case: the kernel releases a flock when the process holding it
exits, however it exits (kill -9 and a power-cut node included), so the file a dead writer
left behind holds no lock and the next writer simply takes it. Nothing is decided from the
PID in the file (which could have been reused), only from the kernel's lock. The file is
never deleted: deleting it would let one writer lock a new file while another still holds
the old one; a released lock is an empty file.

A flock belongs to one open file, so a second ``acquire`` of the same folder in the same
process is counted here (re-entrant) rather than refused. Processes started by a holder
(``serwild train`` → torchrun → ranks) find the holder's PID in ``SERWILD_LOCK_HOLDER`` and
work under its lock instead of taking their own: the holder puts it in their environment
(:func:`child_env`, given as ``env=`` to the child), never in its own. On NFS, Linux emulates
flock with POSIX byte-range locks (held server-side): the same rules hold across nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from serwild.errors import UsageError

LOCK_NAME = ".serwild.processes.lock"
HOLDER_ENV = "SERWILD_LOCK_HOLDER"  # the PID whose locks this process (a descendant) works under


class LockedError(UsageError):
    """Another process is writing the folder."""


class FolderLock:
    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder, self.fd, self.count = folder, fd, 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _HELD.pop(_key(self.folder), None)
        if self.fd is None:  # our launcher's lock: nothing to release
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the file releases the flock
        self.fd = None


_HELD: dict[str, FolderLock] = {}


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def holder(folder: str | Path) -> tuple[int | None, str]:
    """The PID and command written in ``folder``'s lock file (None, "" when empty or absent)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text()
    except OSError:
        return None, ""
    first, _, rest = text.partition("\n")
    return (int(first) if first.strip().isdigit() else None), rest.strip()


def acquire(folder: str | Path, command: str | None = None) -> FolderLock:
    """Lock ``folder`` (created if missing) for this process, or raise :class:`LockedError`."""
    folder = Path(folder)
    held = _HELD.get(_key(folder))
    if held is not None:
        held.count += 1
        return held
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file, or a link to nothing, on the way
        raise UsageError(f"{folder} is not a folder (a file or a broken link is there)") from None
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if not isinstance(e, BlockingIOError):  # a file system without locks (some FUSE mounts)
            print(f"note: {folder} cannot be locked ({e.strerror}): make sure no other serwild job writes there",
                  file=sys.stderr)
            return _held(folder, None)
        pid, what = _wait_for_holder(folder)
        if pid is not None and str(pid) == os.environ.get(HOLDER_ENV):
            return _held(folder, None)  # our launcher holds it for us
        who = f"PID {pid}" + (f" ({what})" if what else "") if pid is not None else "another process"
        raise LockedError(f"{folder} is in use by {who}: wait for it to finish or stop it, then try again") from None
    text = f"{os.getpid()}\n{command or ' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError as e:  # a full disk, say: name the file
        os.close(fd)
        raise OSError(e.errno, e.strerror, str(folder / LOCK_NAME)) from None
    return _held(folder, fd)


def _held(folder: Path, fd: int | None) -> FolderLock:
    """``folder``'s lock (``fd``: its flocked file; None: held by no file of ours), counted held."""
    lock = _HELD[_key(folder)] = FolderLock(folder, fd)
    return lock


def child_env() -> dict[str, str]:
    """The environment a process we start needs to work under our locks (merge it into its
    ``env=``): our PID while we hold a lock of our own; else the holder we work under, if any,
    passed on as we got it (a launcher's lock reaches the ranks through torchrun's agent)."""
    if any(held.fd is not None for held in _HELD.values()):
        return {HOLDER_ENV: str(os.getpid())}
    inherited = os.environ.get(HOLDER_ENV)
    return {HOLDER_ENV: inherited} if inherited else {}


def release(folder: str | Path) -> None:
    """Release this process's lock on ``folder`` (once per acquire); nothing if it holds none."""
    held = _HELD.get(_key(Path(folder)))
    if held is not None:
        held.release()


@contextlib.contextmanager
def locked(folder: str | Path, command: str | None = None) -> Iterator[FolderLock]:
    lock = acquire(folder, command)
    try:
        yield lock
    finally:
        lock.release()


def _wait_for_holder(folder: Path, seconds: float = 1.0) -> tuple[int | None, str]:
    """The holder's PID: it writes the file just after taking the lock, so give it a moment."""
    deadline = time.monotonic() + seconds
    while True:
        pid, what = holder(folder)
        if pid is not None or time.monotonic() > deadline:
            return pid, what
        time.sleep(0.05)
