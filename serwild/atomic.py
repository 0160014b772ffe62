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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"  # temp names are ``.<name>.tmp-<pid>``: clean-ups look for this


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp name beside ``path``, fsync, then rename over ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
