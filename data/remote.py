"""Where a build lives, read one way (:class:`Location`): a folder, ``file://``, ``http(s)://``, an object store.
This module knows locations and bytes; what a manifest must hold is :mod:`serwild.data.manifest`'s business.

A build is a base plus the relative paths its manifest lists; ``join`` accepts only plain relative paths
(:func:`safe_relpath`) and, in a folder, no symlink out of it, so a manifest can never point a reader outside its
base. No location runs a command (webdataset's ``pipe:`` is refused): a location read from a file someone else wrote
(a checkpoint's recorded build) is as safe to open as one the user typed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serwild.data.fetch import (
    MAX_METADATA_BYTES,
    OBJECT_STORES,
    Mismatch,
    NotFound,
    RemoteError,
    RemoteOptions,
    fetch,
    file_path,
    filesystem,
    head_length,
    retrying,
    split_url,
)
from serwild.data.records import ShardRecord, sample_key

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_RELPATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


def contained(base: str, rel: str) -> str:
    """``base``/``rel`` (``rel`` already a safe relative path) if it resolves inside the folder
    ``base``, else RemoteError: a symlink in a build may point within it, never out of it (a
    shard linked to /etc/passwd must not be read, nor its size reported). Nothing is opened."""
    path = Path(base) / rel
    try:
        root, real = Path(base).resolve(), path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise RemoteError(f"{rel} in {base} cannot be resolved ({e}): refusing to read it") from None
    if real != root and root not in real.parents:
        raise RemoteError(f"{rel} in {base} links to {real}, outside the build: refusing to read it")
    return str(path)


def safe_relpath(rel: object) -> str:
    """``rel`` if it is a plain relative path inside a build, else UsageError (one line)."""
    if not isinstance(rel, str) or not _RELPATH.fullmatch(rel):
        raise RemoteError(f"refusing path {rel!r}: a build may only name plain relative paths inside itself "
                          "(letters, digits, '._-' and '/'; no '..', scheme, leading '/', '\\' or '%')")
    return rel


# ----------------------------------------------------------------------------- builds


@dataclass(frozen=True)
class Location:
    """A build's base: ``kind`` is ``local`` (a folder; ``file://`` lands here), ``http``
    (``base`` is the URL, ending in ``/``), ``store`` (an object store URL ending in ``/``,
    read through fsspec)."""

    location: str
    kind: str
    base: str
    options: RemoteOptions = RemoteOptions()

    @property
    def is_remote(self) -> bool:
        return self.kind != "local"

    def join(self, rel: str) -> str:
        """The URL (or path) of ``rel`` under the base; refuses anything that could leave it."""
        try:
            rel = safe_relpath(rel)
            if self.kind == "local":
                return contained(self.base, rel)
        except RemoteError as e:
            raise RemoteError(f"{self.location}: {e}") from None
        if self.kind == "http":
            return self.base + urllib.parse.quote(rel)
        return self.base + rel  # an object store: safe_relpath's characters need no quoting in a key

    def read_bytes(self, rel: str, limit: int = MAX_METADATA_BYTES) -> bytes:
        """All of ``rel``, which must be metadata (manifest.json): more than ``limit`` bytes is
        a RemoteError naming it, read no further (an endless answer never fills memory)."""
        buf = io.BytesIO()
        fetch(self.join(rel), self.options, buf, limit=limit)
        return buf.getvalue()

    def size(self, rel: str) -> int:
        """Bytes of ``rel`` without reading it (stat, HTTP HEAD, an object's info)."""
        url = self.join(rel)
        if self.kind == "local":
            try:
                return os.stat(url).st_size
            except FileNotFoundError:
                raise NotFound(f"{url} not found") from None
        if self.kind == "store":
            protocol, path = split_url(url)
            return int(retrying(url, self.options, lambda: filesystem(protocol, self.options).size(path)))
        return int(retrying(url, self.options, lambda: head_length(url, self.options)))

    def shard_urls(self, records: list[ShardRecord]) -> list[str]:
        """URLs (or paths) of manifest shard records."""
        return [self.join(r.path) for r in records]

    def check(self, r: ShardRecord, full: bool = True) -> str | None:
        """None if the shard matches its record, else one line ("missing: …", "bad: …"): the one verifier of every
        kind of build. ``full``: size, sha256 and sample count (a remote shard is fetched again into the cache,
        :mod:`serwild.data.cache`, where a loader finds it later), else the size only. Network failures (after
        retries) raise RemoteError."""
        if not full or self.kind == "local":
            try:
                n = self.size(r.path)
            except NotFound:
                return f"missing: {r.path}"
            if n != r.bytes:
                return f"bad: {r.path} has {n} bytes, manifest says {r.bytes}"
            if not full:
                return None
        if self.kind == "local":
            with open(self.join(r.path), "rb") as f:
                return _check_tar(r, hashlib.file_digest(f, "sha256").hexdigest(), f)
        from serwild.data.cache import open_shard  # the cache imports this module

        try:
            with open_shard(self.join(r.path), r.sha256, r.bytes, self.options, refresh=True) as f:
                return _check_tar(r, r.sha256, f)
        except NotFound:
            return f"missing: {r.path}"
        except Mismatch as e:
            return f"bad: {r.path} {e.reason}"

    def verify(self, records: Sequence[ShardRecord], full: bool = True) -> list[str]:
        """Problems with ``records`` (empty: all good): :meth:`check` for each."""
        return [p for r in records if (p := self.check(r, full)) is not None]


def _check_tar(r: ShardRecord, sha256: str, f: BinaryIO) -> str | None:
    """The rest of a shard's check, on a local file of the right size: its sha256 and samples."""
    if sha256 != r.sha256:
        return f"bad: {r.path} sha256 differs from the manifest"
    f.seek(0)
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            count = len({sample_key(m.name) for m in tf if m.isfile()})
    except tarfile.TarError as e:
        return f"bad: {r.path} is not a readable tar ({e})"
    return None if count == r.count else f"bad: {r.path} has {count} samples, manifest says {r.count}"


def open_location(location: str | os.PathLike[str], options: RemoteOptions | None = None) -> Location:
    """A build folder, ``file:///…``, ``http(s)://host/prefix/`` or ``s3://bucket/prefix/`` (and
    ``gs://``, ``hf://`` with their packages). Reads nothing; never runs a command."""
    opts = options or RemoteOptions()
    text = os.fspath(location)
    if text.startswith("pipe:"):  # webdataset's word for a shell command: serwild runs none
        raise RemoteError(f"{text[:80]}: serwild reads no pipe: command; give the build's folder or URL (file://, "
                          f"http(s)://, {', '.join(s + '://' for s in OBJECT_STORES)})")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https", *OBJECT_STORES):
        if not parts.netloc:
            raise RemoteError(f"{text}: no host or bucket in the URL")
        if parts.query or parts.fragment:
            raise RemoteError(f"{text}: a build base URL cannot carry a query or fragment (a presigned URL "
                              "signs one object; use s3:// with credentials for private buckets)")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        kind = "http" if scheme in ("http", "https") else "store"
        return Location(text, kind, urllib.parse.urlunsplit((scheme, parts.netloc, path, "", "")), opts)
    if scheme == "file":
        return Location(text, "local", file_path(text), opts)
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, a path
        raise RemoteError(f"{text}: '{scheme}://' builds are not read; use a folder, file://, http(s)://, "
                          f"{', '.join(s + '://' for s in OBJECT_STORES)}")
    return Location(text, "local", str(Path(text).expanduser()), opts)
