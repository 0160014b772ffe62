"""How serwild's bytes arrive from wherever a build lives: one whole object per try (an HTTP GET, an object store's
file through fsspec, a local file), with a timeout on every read, so a dead server cannot hang a reader, and never
more bytes than the manifest lists (metadata: ``MAX_METADATA_BYTES``), so an endless answer is one line.
:func:`retrying` is the one retry loop; spent retries raise :class:`RemoteError`, a ``UsageError`` (the CLI prints
one line, naming the URL) that is also an ``OSError``. Stores and options: docs/publishing.md.

No torch or webdataset here (``serwild verify`` imports this); fsspec's backends are imported on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

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


class Mismatch(RemoteError):
    """An object whose size differs from the manifest's record: shorter or longer, not a failure
    that a retry could mend."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.reason = reason


class OptionsError(UsageError, ValueError):
    """Bad reader options (a ValueError too: the config loader names the section)."""


@dataclass(frozen=True)
class RemoteOptions:
    """How a build is reached and how patient a reader is: the config's ``remote`` section and the one options type
    every reader takes."""

    timeout_s: float = 30.0  # every connect and every read
    retries: int = 3  # per operation: a fetch that fails is tried again whole, up to this many times
    cache_dir: str = ""  # remote shards, fetched whole; "": $SERWILD_CACHE_DIR, else <temp>/serwild-shards-<uid>
    cache_gb: float = 20.0  # the cache's bound: least recently used shards go first
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
        """fsspec arguments for ``protocol``: timeouts, the endpoint; retries are ours (see fetch)."""
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
    or raised as one RemoteError line."""

    def __init__(self, name: str, opts: RemoteOptions) -> None:
        self.name, self.opts = name, opts
        self.count, self.since = 0, time.monotonic()

    def failed(self, e: BaseException) -> None:
        """Sleep before the next try, or raise: NotFound, RemoteError, or ``e`` itself (a bug)."""
        if isinstance(e, RemoteError):
            raise e
        verdict = classify(e, self.opts)
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
    """``operation()`` tried as :class:`_Attempts` says (a HEAD, an object's info, a fetch)."""
    attempts = _Attempts(name, opts)
    while True:
        try:
            return operation()
        except Exception as e:  # classified in failed; unknown errors re-raised
            attempts.failed(e)




_NO_CREDENTIALS = ("no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                   "or remote.anon=true for a public bucket")


def classify(e: BaseException, opts: RemoteOptions) -> tuple[bool, str] | None:
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


def fetch(url: str, opts: RemoteOptions, out: BinaryIO, nbytes: int | None = None,
          limit: int = MAX_METADATA_BYTES) -> str:
    """All of ``url`` written to ``out``, through the one retry loop; its sha256 (hex). Each try is one GET from the
    first byte (a failed try starts over: nothing is stitched together); a connection cut before its Content-Length
    is a failed try. ``nbytes``, the manifest's size: another size is a :class:`Mismatch` (a longer object refused
    at the first byte past it); else at most ``limit`` bytes: an endless answer never fills a disk or memory."""

    def once() -> str:
        out.seek(0)
        out.truncate()
        return _copy(url, opts, out, nbytes, limit)

    return retrying(url, opts, once)


def _copy(url: str, opts: RemoteOptions, out: BinaryIO, nbytes: int | None, limit: int) -> str:
    sha, got, cap = hashlib.sha256(), 0, limit if nbytes is None else nbytes
    with _open_source(url, opts) as src:
        while chunk := src.read(min(READ_CHUNK, cap + 1 - got)):
            got += len(chunk)
            if got > cap and nbytes is not None:
                raise Mismatch(url, f"has more than the {nbytes} bytes the manifest lists (has it changed?): "
                                    "refusing the rest")
            if got > cap:
                raise RemoteError(f"{url}: more than {_mib(limit)}, far more than metadata such as a manifest "
                                  "holds: refusing to read further (is this the right location?)")
            sha.update(chunk)
            out.write(chunk)
        left = getattr(src, "length", None)  # http.client: what the Content-Length still promises
        if left:  # the connection was cut: another try
            raise _ShortRead(got, got + left)
        if nbytes is not None and got < nbytes:  # the object itself is short
            raise Mismatch(url, f"has {got} bytes, manifest says {nbytes}")
    return sha.hexdigest()


def _open_source(url: str, opts: RemoteOptions) -> Any:
    """A readable of ``url`` with a timeout on every read: a plain GET (http), an object store's
    streamed file (s3fs, gcsfs: one GET, each read taking at most the bytes asked for, so a
    server that ignores ``Range`` and sends an endless body costs a read's worth of memory), or
    a local file."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=opts.timeout_s)
    if scheme in OBJECT_STORES:
        protocol, path = split_url(url)
        fs = filesystem(protocol, opts)
        if getattr(fs, "async_impl", False) and hasattr(fs, "open_async"):
            from fsspec.asyn import sync

            return _Streamed(sync(fs.loop, fs.open_async, path, "rb"), fs.loop)
        return fs.open(path, "rb", block_size=OBJECT_BLOCK, cache_type="readahead")
    return open(file_path(url) if scheme == "file" else url, "rb")  # noqa: SIM115 - closed by the caller


class _Streamed:
    """An fsspec async streamed file, read synchronously on its filesystem's loop."""

    def __init__(self, f: Any, loop: Any) -> None:
        self._f, self._loop = f, loop

    def __enter__(self) -> _Streamed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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


def file_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or not url.startswith("file://"):
        raise RemoteError(f"{url}: only local file:// URLs are supported (file:///absolute/path)")
    return urllib.request.url2pathname(parts.path)


def head_length(url: str, opts: RemoteOptions) -> int:
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    with _OPENER.open(req, timeout=opts.timeout_s) as resp:
        length = resp.headers.get("Content-Length", "")  # (resp.length is 0 for HEAD)
        if not length.isdigit():
            raise RemoteError(f"{url}: the server sends no Content-Length")
        return int(length)
