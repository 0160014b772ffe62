"""The errors every entry point turns into one line, and the one map from an exception to its
exit status and that line (:func:`said`): a user's mistake (exit 2), input that cannot be read
though the command was right (exit 1: a dead server, a corrupt shard, a full disk), a stop
(SIGTERM: exit 143, as a shell reports it; Ctrl-C: 130). Anything else is a bug: its traceback
stays."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # out of space, over quota, over a file size limit


class UsageError(Exception):
    """An error said in one line, by default a user's mistake (a missing folder, an empty noise
    dir, a bad flag…). ``exit_code``: what the command line exits with."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class UnavailableError(UsageError):
    """Input that cannot be read now, though nothing the user typed is wrong (a server that does
    not answer after the retries, a shard that does not match its manifest): exit 1, as for any
    failure that running the same command later may not repeat."""

    exit_code = 1


def one_line(text: str) -> str:
    """An error's message as one line. Re-raised from a DataLoader worker, the message is the
    worker's whole traceback; its last line is the original message."""
    if "Original Traceback" in text:
        return text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop or preemption), raised where the program is, like Ctrl-C's
    KeyboardInterrupt: clean-ups (``finally``, ``with``) run, then one line and exit status 143.
    Raised too where a child (torchrun) reports that it was stopped so."""


class DiskFullError(OSError):
    """A write that ran out of space; ``filename`` is the file being written (its final name)."""


def disk_full_cause(e: BaseException | None) -> OSError | None:
    """The disk-full OSError behind ``e``: ``e`` itself, or the cause or context of a wrapper
    (torch.save's RuntimeError, Ray's RayTaskError); None if there is none."""
    for _ in range(8):
        if e is None:
            return None
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def disk_full_path(e: BaseException) -> str | None:
    """The path a disk-full error was writing (see :func:`disk_full_cause`); None if ``e`` is not one."""
    cause = disk_full_cause(e)
    if cause is None:
        return None
    return str(cause.filename) if cause.filename else "(a file it did not name)"


# A path the system refuses (read-only, not a folder, not permitted, /proc…): said in one line.
REFUSED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
                     errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


def refused_by_file_system(e: OSError) -> str | None:
    """The one line for a file operation the file system refused (full, read-only, not permitted,
    not a folder…), naming the file; None for any other OSError (a bug: its traceback stays). The
    command line and the trainer's ranks both say these so."""
    path = disk_full_path(e)
    if path is not None:
        return f"no space left on device writing {path}"
    if e.filename and e.errno in REFUSED:
        return f"{e.filename}: {e.strerror or os.strerror(e.errno or 0)}"
    return None


class Said(NamedTuple):
    code: int  # the exit status
    line: str  # what follows "<program>: "


def said(e: BaseException) -> Said | None:
    """The one map from an exception to its exit status and one line, used by the command line
    and the trainer's ranks; None for a bug (its traceback stays)."""
    if isinstance(e, Terminated):
        return Said(143, "stopped by SIGTERM")
    if isinstance(e, KeyboardInterrupt):
        return Said(130, "interrupted")
    if isinstance(e, UsageError):
        return Said(e.exit_code, f"error: {e}")
    if isinstance(e, OSError) and (line := refused_by_file_system(e)) is not None:
        return Said(1 if disk_full_path(e) is not None else 2, f"error: {line}")  # a path is the user's to choose
    return None
