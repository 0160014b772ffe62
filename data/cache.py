"""Shards of a remote build, read from a local copy: fetched whole once, checked against the manifest's size and
sha256 on arrival, kept, and evicted least recently used past ``remote.cache_gb`` (docs/publishing.md), so a loader
never parses a tar off a socket.

The folder may be shared by every rank, loader worker and run on the machine: a copy is named by its sha256, written
to a temp file and renamed into place, and opened before anything is evicted (an evicted file stays readable to
whoever has it open).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serwild.data.fetch import Mismatch, RemoteOptions, fetch
from serwild.processes import atomic


def cache_folder(opts: RemoteOptions) -> Path:
    """Where ``opts`` keeps its shards."""
    folder = opts.cache_dir or os.environ.get("SERWILD_CACHE_DIR")
    return Path(folder) if folder else Path(tempfile.gettempdir()) / f"serwild-shards-{os.getuid()}"


def open_shard(url: str, sha256: str, nbytes: int, opts: RemoteOptions, refresh: bool = False) -> BinaryIO:
    """The shard at ``url``, open for reading from the cache: fetched first unless a copy is
    there (``refresh``: fetched regardless, as a check of the server's copy does). A copy whose
    bytes are not the manifest's is refused (:class:`Mismatch`) and kept out."""
    folder = cache_folder(opts)
    path = folder / f"{sha256}.tar"
    if not refresh and (f := _open_copy(path)) is not None:
        return f
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{sha256}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per shard: the other ranks and workers wait, then read it
        if not refresh and (f := _open_copy(path)) is not None:
            return f
        atomic.remove_stale_temps(folder)  # what a killed fetch left
        temp = atomic.temp_name(path)
        try:
            with open(temp, "w+b") as out:
                if fetch(url, opts, out, nbytes) != sha256:
                    raise Mismatch(url, "sha256 differs from the manifest")
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    evict(folder, int(opts.cache_gb * 2**30), keep=path)
    return f


def _open_copy(path: Path) -> BinaryIO | None:
    """The cached copy at ``path``, open and marked recently used; None if there is none."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except FileNotFoundError:
        return None
    with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: still readable through f
        os.utime(path)
    return f


def evict(folder: Path, max_bytes: int, keep: Path) -> list[Path]:
    """Remove the least recently used copies until the folder holds at most ``max_bytes``
    (``keep``, the copy just fetched, stays); the removed paths."""
    copies = []
    for p in folder.glob("*.tar"):
        with contextlib.suppress(FileNotFoundError):  # another process evicted it meanwhile
            st = p.stat()
            copies.append((st.st_mtime, st.st_size, p))
    total, removed = sum(size for _, size, _ in copies), []
    for _, size, p in sorted(copies):
        if total <= max_bytes:
            break
        if p != keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
            total -= size
    return removed


@dataclass(frozen=True)
class RemoteShards:
    """What a loader needs to read a remote build's shards: its network options and, per shard
    URL, the sha256 and size its manifest lists (checked on arrival)."""

    options: RemoteOptions
    digests: dict[str, tuple[str, int]]

    def open(self, url: str) -> BinaryIO:
        sha256, nbytes = self.digests[url]
        return open_shard(url, sha256, nbytes, self.options)
