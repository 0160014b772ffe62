"""Where a build lives, read one way: a folder, ``file://``, ``http(s)://``, an object store
(``s3://``, and ``gs://``/``hf://`` where gcsfs/huggingface_hub are installed).

    build = open_location("s3://bucket/serwild/demo/")               # or a folder, file:///…, https://…/,
    raw = build.read_bytes("manifest.json")
    problems = build.verify(records)                                 # streams each shard once

What a manifest must hold is :mod:`serwild.data.manifest`'s business (``load_manifest``
reads it through a ``Build`` and checks it): this module only knows locations and bytes.

A build is a base plus the relative paths its manifest lists. ``join`` accepts only plain
relative paths (letters, digits, ``._-`` and ``/``; no ``..``, no scheme, no absolute path, no
backslash, no ``%``), so a manifest can never point a reader outside its base; in a folder, a
path that is a symlink resolving outside the folder is refused too, before anything opens it.

No location runs a command (webdataset's ``pipe:`` is refused with one line): a location read
from a file someone else wrote (a checkpoint's recorded build) is as safe to open as one the
user typed. Metadata (``read_bytes``: manifest.json) is read up to
``MAX_METADATA_BYTES``, so an endless answer is one line, not a MemoryError.

Every read has a timeout (``RemoteOptions.timeout_s``: the socket's for http(s), botocore's
connect/read timeouts for S3), so a dead server cannot hang a reader; a failed read is retried
with exponential backoff (a stream resumes where it stopped: an HTTP ``Range`` request, a
seek on an object store), and when the retries are spent the reader raises
:class:`RemoteError`: a ``UsageError`` (the CLI prints one line, naming the URL) that is also
an ``OSError`` (tar readers treat it as an I/O failure). Every stream goes through
:class:`_Resumable`, the one retry loop; object stores are read through fsspec (s3fs, gcsfs,
huggingface_hub's ``HfFileSystem``). S3-compatible endpoints: ``remote.endpoint_url`` or
the usual AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``…).

No torch or webdataset here (``serwild verify`` imports this); fsspec's backends are
imported on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import re
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from serwild.data.records import ShardRecord, sample_key
from serwild.errors import UnavailableError, UsageError, one_line

USER_AGENT = "serwild-remote/1"
READ_CHUNK = 1 << 16
OBJECT_BLOCK = 8 << 20  # one ranged GET per 8 MiB of an object-store stream (fsspec's read-ahead block)
MAX_METADATA_BYTES = 64 << 20  # a manifest of a million shards is ~300 MB short of this; shards are streamed
RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
# Object stores read through fsspec, and the package each needs. An allow-list, not "any
# fsspec protocol": a checkpoint's recorded location must not name reference://, a zip or a
# local git repository.
OBJECT_STORES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub"}
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_RELPATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
class RemoteError(UsageError, OSError):
    """A location that cannot be read: one line naming the URL (network failure after the
    retries, missing object, refused path, unsupported scheme)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.message = str(args[0]) if args else ""

    def __str__(self) -> str:
        # webdataset appends the URL and the stream to ``exn.args`` (and " @ <stream>" to the
        # first): the message is the one given here.
        return one_line(self.message or super().__str__())


class Unreachable(RemoteError, UnavailableError):
    """Retries spent on failures that may pass (timeouts, refused connections, 5xx): nothing the
    user typed is wrong, so not a usage error (exit 1, not 2)."""


class NotFound(RemoteError):
    """The object does not exist (HTTP 404/410, a missing file)."""


class OptionsError(UsageError, ValueError):
    """Bad reader options (a ValueError too: the config loader names the section)."""


@dataclass(frozen=True)
class RemoteOptions:
    """How a build is reached and how patient a reader is: the config's ``remote`` section and
    the one options type every reader takes. ``timeout_s`` bounds every connect and every
    read; a failed operation is tried ``1 + retries`` times, waiting ``backoff_s``, 2×, 4×…
    (at most ``backoff_max_s``) in between. ``endpoint_url``: an S3-compatible server (empty:
    ``AWS_ENDPOINT_URL`` or AWS itself); ``anon``: read a public bucket without credentials."""

    timeout_s: float = 30.0  # every connect and every read
    retries: int = 3  # per failure (progress resets the count)
    backoff_s: float = 0.5  # first wait between tries, doubling
    backoff_max_s: float = 8.0  # longest wait between tries
    endpoint_url: str = ""  # s3:// on another S3-compatible server, e.g. http://127.0.0.1:9000
    anon: bool = False  # s3:// without credentials (public buckets)

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise OptionsError("remote.timeout_s must be > 0 and remote.retries, remote.backoff_s, "
                               f"remote.backoff_max_s >= 0 (got {self})")
        if self.endpoint_url and urllib.parse.urlsplit(self.endpoint_url).scheme not in ("http", "https"):
            raise OptionsError(f"remote.endpoint_url must be an http(s):// URL, got {self.endpoint_url!r}")

    def options(self) -> RemoteOptions:
        """Itself (callers written for the config section ask it for reader options)."""
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based)."""
        return min(self.backoff_s * 2**attempt, self.backoff_max_s)

    def worst_case_s(self) -> float:
        """Longest one operation can take against a server that accepts but never answers."""
        return (self.retries + 1) * self.timeout_s + sum(self.delay(i) for i in range(self.retries))

    def storage_options(self, protocol: str) -> dict[str, Any]:
        """fsspec arguments for ``protocol``: timeouts, the endpoint; retries are ours (see _Resumable)."""
        if protocol != "s3":
            return {}
        config: dict[str, Any] = {"connect_timeout": self.timeout_s, "read_timeout": self.timeout_s,
                                  "retries": {"total_max_attempts": 1}}
        kw: dict[str, Any] = {"anon": self.anon, "config_kwargs": config}
        if self.endpoint_url:
            kw["endpoint_url"] = self.endpoint_url
        return kw


_FILESYSTEMS: dict[tuple[int, str, RemoteOptions], Any] = {}


def filesystem(protocol: str, opts: RemoteOptions) -> Any:
    """The fsspec filesystem of an object store (one per process, protocol and options)."""
    key = (os.getpid(), protocol, opts)  # a forked DataLoader worker makes its own
    if key not in _FILESYSTEMS:
        try:
            import fsspec
        except ImportError:
            raise RemoteError(f"{protocol}:// needs fsspec: pip install 'serwild[s3]'") from None
        try:
            fs = fsspec.filesystem(protocol, **opts.storage_options(protocol))
        except ImportError:
            raise RemoteError(f"{protocol}:// needs the {OBJECT_STORES.get(protocol, protocol)} package: "
                              f"pip install {OBJECT_STORES.get(protocol, protocol)}") from None
        if hasattr(fs, "retries"):  # s3fs retries timeouts 5 times itself: the retry loop is ours
            fs.retries = 1
        _FILESYSTEMS[key] = fs
    return _FILESYSTEMS[key]


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ("s3", "bucket/key"): fsspec's protocol and path."""
    protocol, _, path = url.partition("://")
    return protocol.lower(), path


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"
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


# ----------------------------------------------------------------------------- streams


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (object stores and the HF Hub use them) to http(s) targets only
    (urllib's own would follow one to ftp://)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise RemoteError(f"{req.full_url}: refusing a redirect to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_Redirects)  # + urllib's defaults: proxies from the environment


class _ShortRead(OSError):
    def __init__(self, got: int, total: int) -> None:
        super().__init__(f"connection closed after {got} of {total} bytes")


class _Attempts:
    """Failures of one operation on ``name``: each is classified, then retried after a backoff
    or raised as one RemoteError line; progress (bytes read) starts the count again."""

    def __init__(self, name: str, opts: RemoteOptions) -> None:
        self.name, self.opts = name, opts
        self.progress()

    def progress(self) -> None:
        self.count, self.since = 0, time.monotonic()  # "gave up after" counts from the last progress

    def failed(self, e: BaseException) -> None:
        """Sleep before the next try, or raise: NotFound, RemoteError, or ``e`` itself (a bug)."""
        if isinstance(e, RemoteError):
            raise e
        verdict = _classify(e, self.opts)
        if verdict is None:
            raise e
        retry, text = verdict
        self.count += 1
        if _not_found(e):
            raise NotFound(f"{self.name}: not found ({text})") from None
        if not retry or self.count > self.opts.retries:
            spent = time.monotonic() - self.since
            tries = f" (gave up after {self.count} attempts, {spent:.1f} s)" if self.count > 1 else ""
            raise (Unreachable if retry else RemoteError)(f"{self.name}: {text}{tries}") from None
        time.sleep(self.opts.delay(self.count - 1))


def retrying(name: str, opts: RemoteOptions, operation: Any) -> Any:
    """``operation()`` tried as :class:`_Attempts` says (a HEAD, an object's info)."""
    attempts = _Attempts(name, opts)
    while True:
        try:
            return operation()
        except Exception as e:  # classified in failed; unknown errors re-raised
            attempts.failed(e)




_NO_CREDENTIALS = ("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                   "or remote.anon=true for a public bucket")


def _classify(e: BaseException, opts: RemoteOptions) -> tuple[bool, str] | None:
    """(retry?, what happened) for an I/O failure; None for anything else (a bug: re-raised)."""
    if isinstance(e, urllib.error.HTTPError):
        e.close()
        return e.code in RETRY_HTTP, f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        if isinstance(reason, TimeoutError):
            return True, f"no answer within {opts.timeout_s:g} s"
        if isinstance(reason, ssl.SSLCertVerificationError):
            return False, f"TLS certificate not accepted ({reason.verify_message})"
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        return True, text
    # botocore's errors (s3fs passes them on) are not OSErrors: told apart by name, so that
    # botocore is imported only by those who read a bucket.
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return False, _NO_CREDENTIALS
    if isinstance(e, TimeoutError) or name in ("ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError"):
        return True, f"no answer within {opts.timeout_s:g} s"
    if name == "EndpointConnectionError":
        return True, str(e)
    if isinstance(e, PermissionError):
        return False, f"access denied ({e.strerror or e})"
    if isinstance(e, _ShortRead):
        return True, str(e)
    if isinstance(e, http.client.IncompleteRead):
        return True, f"connection closed mid-transfer ({len(e.partial)} bytes of a chunk)"
    if isinstance(e, (OSError, http.client.HTTPException)) or type(e).__module__.split(".")[0] in (
            "botocore", "aiobotocore", "aiohttp"):
        text = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        return True, text
    return None


def _not_found(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError) or (isinstance(e, urllib.error.HTTPError) and e.code in (404, 410))


class _Resumable(io.RawIOBase):
    """A read-only stream that reopens itself at the current offset after a failed read,
    ``retries`` times per failure (progress resets the count), then raises RemoteError. The
    one retry loop of every reader (``retrying`` runs single operations through it)."""

    def __init__(self, url: str, opts: RemoteOptions) -> None:
        super().__init__()
        self.name, self._opts = url, opts
        self._pos, self._attempts = 0, _Attempts(url, opts)
        self._src: Any = None
        self._connect()

    # subclasses: open at a byte offset, read into a buffer, drop the source
    def _open(self, pos: int) -> Any:
        raise NotImplementedError

    def _read_src(self, b: memoryview) -> int:
        raise NotImplementedError

    def _drop_src(self) -> None:
        src, self._src = self._src, None
        if src is not None:
            src.close()

    def _connect(self) -> None:
        while self._src is None:
            try:
                self._src = self._open(self._pos)
            except Exception as e:  # classified in _failed; unknown errors re-raised
                self._drop_src()
                self._failed(e)

    def _failed(self, e: Exception) -> None:
        self._attempts.failed(e)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        while True:
            if self._src is None:
                self._connect()
            try:
                n = self._read_src(view)
            except Exception as e:  # classified in _failed; unknown errors re-raised
                self._drop_src()
                self._failed(e)
                continue
            if n:
                self._pos += n
                self._attempts.progress()
            return n

    def close(self) -> None:
        if not self.closed:
            self._drop_src()
        super().close()


class _HTTPStream(_Resumable):
    """GET with a socket timeout; resumes with ``Range: bytes=pos-`` (``If-Range`` pinned to
    the first answer's ETag/Last-Modified); a body shorter than its Content-Length is a
    failure, not an end (http.client's ``readinto`` returns 0 on a cut connection).

    Written here rather than taken from fsspec's HTTPFileSystem, which sends a HEAD before
    every GET, reads in ranged blocks, neither retries nor resumes a stream, and follows
    redirects to any scheme: a build served by any static web server or the HF Hub is read
    with one plain GET per file."""

    def __init__(self, url: str, opts: RemoteOptions) -> None:
        self._total: int | None = None
        self._ident: tuple[str | None, str | None, int | None] | None = None
        super().__init__(url, opts)

    def _open(self, pos: int) -> http.client.HTTPResponse:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if pos:
            headers["Range"] = f"bytes={pos}-"
            etag, modified = self._ident[:2] if self._ident else (None, None)
            validator = etag if etag and not etag.startswith("W/") else modified  # If-Range wants a strong one
            if validator:
                headers["If-Range"] = validator
        resp = _OPENER.open(urllib.request.Request(self.name, headers=headers), timeout=self._opts.timeout_s)
        try:
            ident = (resp.headers.get("ETag"), resp.headers.get("Last-Modified"), resp.length)
            if not pos:
                self._total, self._ident = resp.length, ident
            elif resp.status == 206:
                m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != pos:
                    raise RemoteError(f"{self.name}: asked for bytes {pos}- to resume, server sent "
                                      f"{resp.headers.get('Content-Range')!r}")
            elif self._ident and ident == self._ident:  # no range support: same object, skip to pos
                left = pos
                while left:
                    chunk = resp.read(min(left, READ_CHUNK))
                    if not chunk:
                        raise _ShortRead(pos - left, pos)
                    left -= len(chunk)
            else:
                raise RemoteError(f"{self.name} changed on the server while being read (resuming at byte {pos})")
        except BaseException:
            resp.close()
            raise
        return resp

    def _read_src(self, b: memoryview) -> int:
        n = self._src.readinto(b)
        if n == 0 and self._total is not None and self._pos < self._total:
            raise _ShortRead(self._pos, self._total)
        return n


class _ObjectStream(_Resumable):
    """An object in a store fsspec reads (s3://, gs://, hf://), read with a bound on what one read
    can pull into memory. Stores fsspec drives asynchronously (s3fs, gcsfs) are read through their
    streamed files (``open_async``: one GET, each read taking at most the bytes asked for), so a
    server that ignores ``Range`` and sends an endless body costs a read's worth of memory and
    ends in one line once it passes the object's size (a ranged read-ahead buffered such a body
    whole: gigabytes, then a MemoryError). Other stores: fsspec's read-ahead. A retry reopens the
    object and skips to where the last read stopped; retrying and resuming are ours (a store's
    client retries a request, not a stream a DataLoader is half-way through)."""

    def _open(self, pos: int) -> Any:
        protocol, path = split_url(self.name)
        fs = filesystem(protocol, self._opts)
        self._size = int(fs.size(path))  # the object's length (HEAD): no read may run past it
        if getattr(fs, "async_impl", False) and hasattr(fs, "open_async"):
            from fsspec.asyn import sync

            f = _Streamed(sync(fs.loop, fs.open_async, path, "rb"), fs.loop)
            while pos > 0:  # resume: one GET streams from the start, the bytes already read are skipped
                skipped = f.read(min(pos, READ_CHUNK))
                if not skipped:
                    raise _ShortRead(self._pos - pos, self._size)
                pos -= len(skipped)
            return f
        f = fs.open(path, "rb", block_size=OBJECT_BLOCK, cache_type="readahead")
        if pos:
            f.seek(pos)
        return f

    def _read_src(self, b: memoryview) -> int:
        left = self._size - self._pos
        data = self._src.read(min(len(b), max(left, 0) + 1))  # one byte past the end tells an overlong body
        if len(data) > left:
            raise RemoteError(f"{self.name}: the server sends more than the object's {self._size} bytes (does it "
                              "ignore Range, or is the object changing?): refusing the rest")
        if not data and left > 0:
            raise _ShortRead(self._pos, self._size)
        b[:len(data)] = data
        return len(data)


class _Streamed:
    """An fsspec async streamed file, read synchronously on its filesystem's loop."""

    def __init__(self, f: Any, loop: Any) -> None:
        self._f, self._loop = f, loop

    def read(self, n: int) -> bytes:
        from fsspec.asyn import sync

        try:
            return sync(self._loop, self._f.read, n)
        except KeyError as e:  # s3fs reads the answer's content-length header: a chunked answer has none
            raise RemoteError(f"the server's answer has no {e} header") from None

    def close(self) -> None:
        from fsspec.asyn import sync

        with contextlib.suppress(Exception):
            sync(self._loop, self._f.close)
        # s3fs's streamed file keeps its GET's body as ``r`` and does not close it: closed here, or an
        # endless body would keep streaming into a pooled connection.
        body = getattr(self._f, "r", None)
        if body is not None and hasattr(body, "close"):
            body.close()


def open_url(url: str, options: RemoteOptions | None = None) -> BinaryIO:
    """A buffered binary stream of ``url``: a local path, ``file://``, ``http(s)://``, an object
    store (``s3://``…); timeouts, retries and resume as ``options`` say."""
    opts = options or RemoteOptions()
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        return io.BufferedReader(_HTTPStream(url, opts), buffer_size=READ_CHUNK)
    if scheme.lower() in OBJECT_STORES:
        return io.BufferedReader(_ObjectStream(url, opts), buffer_size=READ_CHUNK)
    path = _file_path(url) if scheme == "file" else url
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to the caller
    except FileNotFoundError:
        raise NotFound(f"{path} not found") from None
    except OSError as e:
        raise RemoteError(f"{path}: {e.strerror or e}") from None


def _file_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or not url.startswith("file://"):
        raise RemoteError(f"{url}: only local file:// URLs are supported (file:///absolute/path)")
    return urllib.request.url2pathname(parts.path)


class _Tee(io.RawIOBase):
    """Reads through ``raw``, hashing and counting every byte (tarfile sees only this)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw, self.sha, self.nbytes = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        self.sha.update(data)
        self.nbytes += n
        return n

    def drain(self) -> None:
        """Read to the end: bytes after the tar's end blocks (padding, garbage) count too."""
        while True:
            data = self.raw.read(READ_CHUNK)
            if not data:
                return
            self.sha.update(data)
            self.nbytes += len(data)




# ----------------------------------------------------------------------------- builds


@dataclass(frozen=True)
class Build:
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

    def open_stream(self, rel: str) -> BinaryIO:
        """A buffered binary stream of ``rel`` (timeouts, retries and resume as configured)."""
        return open_url(self.join(rel), self.options)

    def read_bytes(self, rel: str, limit: int = MAX_METADATA_BYTES) -> bytes:
        """All of ``rel``, which must be metadata (manifest.json): more than ``limit`` bytes is
        a RemoteError naming it, read no further (an endless answer never fills memory)."""
        data = bytearray()
        with self.open_stream(rel) as f:
            while chunk := f.read(min(READ_CHUNK, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    raise RemoteError(f"{self.join(rel)}: more than {_mib(limit)}, far more than metadata such as "
                                      "a manifest holds: refusing to read further (is this the right location?)")
        return bytes(data)

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
        return int(retrying(url, self.options, lambda: _head_length(url, self.options)))

    def shard_urls(self, records: list[Any]) -> list[str]:
        """URLs (or paths) of manifest shard records (dicts or :class:`ShardRecord`)."""
        return [self.join(ShardRecord.of(r).path) for r in records]

    def check(self, record: ShardRecord | dict[str, Any], full: bool = True) -> str | None:
        """None if the shard matches its record, else one line ("missing: …", "bad: …"). The
        one verifier of every kind of build. ``full``: one streaming pass (size, sha256, sample
        count; nothing written to disk), else the size only. A folder's size is stat'ed first
        (free); a remote build's full check asks nothing but the one GET. Network failures
        (after retries) raise RemoteError."""
        r = ShardRecord.of(record)
        if not full or self.kind == "local":
            try:
                n = self.size(r.path)
            except NotFound:
                return f"missing: {r.path}"
            if n != r.bytes:
                return f"bad: {r.path} has {n} bytes, manifest says {r.bytes}"
            if not full:
                return None
        return self.stream_check(r.path, r.sha256, r.count, r.bytes)

    def stream_check(self, rel: str, sha256: str, count: int, nbytes: int) -> str | None:
        """None if ``rel`` has ``nbytes`` bytes, that sha256 and ``count`` samples, else one
        line saying what is wrong. One streaming pass, nothing written to disk."""
        keys: set[str] = set()
        tar_error = None
        try:
            with self.open_stream(rel) as raw:
                tee = _Tee(raw)
                try:
                    with tarfile.open(fileobj=tee, mode="r|") as tf:
                        keys.update(sample_key(m.name) for m in tf if m.isfile())
                except tarfile.TarError as e:
                    tar_error = e
                tee.drain()
        except NotFound:
            return f"missing: {rel}"
        if tee.nbytes != nbytes:
            return f"bad: {rel} has {tee.nbytes} bytes, manifest says {nbytes}"
        if tee.sha.hexdigest() != sha256:
            return f"bad: {rel} sha256 differs from the manifest"
        if tar_error is not None:
            return f"bad: {rel} is not a readable tar ({tar_error})"
        if len(keys) != count:
            return f"bad: {rel} has {len(keys)} samples, manifest says {count}"
        return None

    def verify(self, records: list[Any], full: bool = True) -> list[str]:
        """Problems with ``records`` (empty: all good): :meth:`check` for each."""
        return [p for r in records if (p := self.check(r, full)) is not None]


def _head_length(url: str, opts: RemoteOptions) -> int:
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    with _OPENER.open(req, timeout=opts.timeout_s) as resp:
        length = resp.headers.get("Content-Length", "")  # (resp.length is 0 for HEAD)
        if not length.isdigit():
            raise RemoteError(f"{url}: the server sends no Content-Length")
        return int(length)


def open_location(location: str | os.PathLike[str], options: RemoteOptions | None = None) -> Build:
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
        return Build(text, kind, urllib.parse.urlunsplit((scheme, parts.netloc, path, "", "")), opts)
    if scheme == "file":
        return Build(text, "local", _file_path(text), opts)
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, a path
        raise RemoteError(f"{text}: '{scheme}://' builds are not read; use a folder, file://, http(s)://, "
                          f"{', '.join(s + '://' for s in OBJECT_STORES)}")
    return Build(text, "local", str(Path(text).expanduser()), opts)
