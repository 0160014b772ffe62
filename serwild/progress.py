"""Progress that a terminal and a log file can both hold: :func:`progress` is a tqdm bar on a
terminal and whole lines anywhere else (nohup, Slurm, CI, a pipe: a bar would print nothing
until the end, or ``\\r`` soup), at the start, every ``LOG_EVERY_S`` seconds or
``LOG_EVERY_FRACTION`` of the total, and at the end; :func:`stage` is one line naming a step.
Lines carry the time (``2025-01-31T12:00:03 serwild build: build shards: 120/480 shard (25%), …``),
which sets them apart from a command's one-line error (:data:`LOG_LINE` tells them apart).
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
import time
from typing import IO, Any

LOG_EVERY_S = 30.0
LOG_EVERY_FRACTION = 0.10
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d serwild ")  # every line :func:`stage` and LogProgress print


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def stage(command: str, text: str, stream: IO[str] | None = None) -> None:
    """One line ``<time> serwild <command>: <text>`` on stderr (terminal or log alike)."""
    print(f"{_stamp()} serwild {command}: {text}", file=stream if stream is not None else sys.stderr, flush=True)


def progress(total: int | None, desc: str, unit: str = "it", command: str = "", enabled: bool = True,
             stream: IO[str] | None = None, every_s: float = LOG_EVERY_S, initial: int = 0,
             leave: bool = True) -> Any:
    """A bar with ``update(n)``, ``close()`` and the context-manager protocol: tqdm on a terminal,
    :class:`LogProgress` elsewhere; with ``enabled`` False (e.g. ranks other than 0), one that shows
    nothing. ``initial``: work already done (a resumed epoch); ``leave``: keep the bar (terminal only)."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return LogProgress(total, desc, unit, command, stream, every_s, silent=True, initial=initial)
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, initial=initial, leave=leave)
    return LogProgress(total, desc, unit, command, stream, every_s, initial=initial)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LogProgress:
    """Whole progress lines, never ``\\r``; a timer thread prints one every ``every_s`` seconds even
    while no update comes (a slow task must not look like a hang)."""

    def __init__(self, total: int | None, desc: str, unit: str, command: str, stream: IO[str],
                 every_s: float = LOG_EVERY_S, silent: bool = False, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.stream, self.every_s = total, desc, unit, stream, every_s
        self.prefix = f"serwild {command}: " if command else "serwild: "
        self.initial = initial  # done before this run: counted in done/total, not in the rate
        self.n, self.silent, self.start = initial, silent, time.monotonic()
        self.last_line = self.start
        # counted in whole units (no float drift): a line each time done passes the next tenth
        self.step = max(1, math.ceil(total * LOG_EVERY_FRACTION)) if total else 0
        self.next_count = (initial // self.step + 1) * self.step if self.step else 0
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.timer: threading.Thread | None = None
        if not silent:
            self._print(f"{desc}: started" + (f" ({total} {unit})" if total is not None else ""))
            self.timer = threading.Thread(target=self._tick, daemon=True, name=f"progress {desc}")
            self.timer.start()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n
            due = time.monotonic() - self.last_line >= self.every_s
            tenth = bool(self.step) and self.next_count <= self.n < (self.total or 0)
            if self.step and self.n >= self.next_count:
                self.next_count = (self.n // self.step + 1) * self.step
            if not self.silent and (due or tenth):
                self._print(self.line())

    def line(self) -> str:
        """``desc: done/total unit (pct), rate unit/s, ETA …``."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        if not self.total:
            return f"{self.desc}: {self.n} {self.unit}, {rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed"
        eta = (self.total - self.n) / rate if rate > 0 else None
        return (f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%), "
                f"{rate:.3g} {self.unit}/s, ETA {_duration(eta) if eta is not None else '?'}")

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        if self.timer is not None:
            self.timer.join()
        if not self.silent:
            elapsed = time.monotonic() - self.start
            of = f"/{self.total}" if self.total is not None else ""
            self._print(f"{self.desc}: done {self.n}{of} {self.unit} in {_duration(elapsed)}")

    def _tick(self) -> None:
        while not self.stop.wait(min(self.every_s, 5.0)):
            with self.lock:
                if time.monotonic() - self.last_line >= self.every_s:
                    self._print(self.line())

    def _print(self, text: str) -> None:
        self.last_line = time.monotonic()
        # a closed pipe or log: progress is not worth failing a build for
        with contextlib.suppress(OSError, ValueError):
            print(f"{_stamp()} {self.prefix}{text}", file=self.stream, flush=True)
