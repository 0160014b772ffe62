"""Atomic file writes: a file exists complete under its final name, or not at all.

Every output of serwild goes through here (shards, manifests, cards, rejects, checkpoints,
configs, reports, figures, metrics.jsonl), because a reader must never see a half-written
file under its final name: a tar cut at a member boundary, a truncated checkpoint or a
cut JSON line would otherwise look valid, or be lost on a kill.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from serwild.errors import DiskFullError, UsageError, disk_full_cause

TMP_MARK = ".tmp-"  # temp names are ``.<name>.tmp-<pid>``: clean-ups look for this
TEMP_NAME = re.compile(r"^\..+" + re.escape(TMP_MARK) + r"(\d+)$")


def unwritable(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be written, or None when it can.

    A folder not there yet is judged by the nearest one above it that is (where it would be
    made). The kernel is asked (access(2)), so nothing is written, and a read-only mount says
    so even to root, whom file modes do not stop."""
    there = Path(folder).absolute()
    if there.is_symlink() and not there.exists():
        return f"{there} is a link to nothing (a disk not mounted?)"
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        return f"{there} is not a folder"
    if os.access(there, os.W_OK | os.X_OK):
        return None
    if os.statvfs(there).f_flag & os.ST_RDONLY:
        return f"read-only file system at {there}"
    return f"permission denied on {there}"


def require_writable(folder: str | Path, what: str, hint: str) -> None:
    """Refuse, in one line, an output folder that cannot be written, before any work is done
    (a whole test set scored, then a traceback at the first write, loses that work)."""
    why = unwritable(folder)
    if why is not None:
        raise UsageError(f"{what} {folder} cannot be written ({why}): {hint}")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_stale_temp(path: Path) -> bool:
    """A temp file (``.<name>.tmp-<pid>``) whose writer is no longer running."""
    m = TEMP_NAME.match(path.name)
    return bool(m) and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1)))


def remove_stale_temps(folder: str | Path, recursive: bool = False, writers_done: bool = False) -> list[Path]:
    """Remove the temp files that killed writers left in ``folder``; the removed paths.

    Only a dead writer's temps go: a live PID may be another writer at work (call this under
    the folder's lock, :mod:`serwild.processes.lock`, so no other serwild process writes there). PIDs
    are per machine: on a shared file system, temps of a writer on another node look dead
    here, which the folder lock rules out too. ``writers_done``: every temp goes, for a caller
    that knows its writers are done (a build after its map: a Ray worker outlives its task).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        if p.is_file() and (is_stale_temp(p) or (writers_done and TEMP_NAME.match(p.name))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def _naming(path: Path | str) -> Iterator[None]:
    """A disk-full error raised inside names ``path``, the file being written: the kernel's
    ENOSPC on a write names no file (or the temp), and torch.save wraps it in a RuntimeError."""
    try:
        yield
    except Exception as e:
        full = disk_full_cause(e)
        if full is not None and not isinstance(full, DiskFullError):
            raise DiskFullError(full.errno, os.strerror(full.errno), str(path)) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp name beside ``path``, fsync, then rename over ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with _naming(path):
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def append_line(path: str | Path, line: str) -> None:
    """``line`` appended to the log at ``path``, synced (a log, unlike the files above, grows in
    place: a reader trusts each whole line). Unbuffered, so a failed write leaves nothing for the
    close to write again."""
    data = memoryview((line + "\n").encode())
    with _naming(path), open(path, "ab", buffering=0) as f:
        while data:
            data = data[f.write(data):]
        os.fsync(f.fileno())


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """The whole file anew (a rewrite, e.g. dropping lines on resume, is never half done)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """A matplotlib figure as a PNG, rendered in memory first and then written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    write_bytes(path, buf.getvalue())
    return Path(path)
