"""A loopback HTTP server for tests: serves a folder on 127.0.0.1 (a free port), and can be
told to misbehave — cut a file (the file itself truncated, or the connection dropped
mid-body), fail with an HTTP status, redirect, or stall (accept, never answer).

    with LoopbackServer(build_dir, max_lifetime_s=30) as srv:
        srv.cut("ahsn/test/clean-000000.tar", 1000)
        url = srv.url("manifest.json")

The server always stops: on leaving the ``with``, or by itself after ``max_lifetime_s``
(a test that forgets it, or hangs, cannot leave a server behind). Stalled requests are
released when it stops. Single ``Range: bytes=a-[b]`` requests are honoured.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class _Cut:
    nbytes: int
    drop: bool  # True: announce the full length, then close after nbytes (a dropped connection)
    times: int | None  # how many requests it applies to (None: all)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LoopbackServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        action = owner._admit(self.command, rel, self.headers.get("Range"))
        if action == "stall":
            owner._stopping.wait()  # accept, never answer (until the server stops)
            self.close_connection = True
            return
        if isinstance(action, int):
            self._status_only(action)
            return
        if action.startswith("redirect:"):
            self.send_response(302)
            self.send_header("Location", action[len("redirect:"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = (owner.root / rel).resolve()
        if not path.is_file() or owner.root not in path.parents:
            self._status_only(404)
            return
        data = path.read_bytes()
        cut = owner._take_cut(rel)
        if cut is not None and not cut.drop:
            data = data[:cut.nbytes]  # the file itself is shorter on the server
        total, start, end, status = len(data), 0, len(data), 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and int(m.group(1)) < total:
            start = int(m.group(1))
            end = min(total, int(m.group(2)) + 1) if m.group(2) else total
            status = 206
        elif m:
            self._status_only(416)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", formatdate(int(path.stat().st_mtime), usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
        self.end_headers()
        if not body:
            return
        if cut is not None and cut.drop:
            end = max(start, min(end, cut.nbytes))
            self.close_connection = True
        try:
            self.wfile.write(data[start:end])
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _status_only(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class LoopbackServer:
    """See the module docstring. ``requests`` lists (method, path, Range header) as received."""

    def __init__(self, root: str | os.PathLike[str], max_lifetime_s: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.max_lifetime_s = max_lifetime_s
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._cuts: dict[str, _Cut] = {}
        self._fails: dict[str, list[int]] = {}
        self._redirects: dict[str, str] = {}
        self._stall_after: int | None = None
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ control
    def cut(self, rel: str, nbytes: int, drop: bool = False, times: int | None = None) -> None:
        """Serve only the first ``nbytes`` of ``rel``: as a shorter file, or (``drop``) with
        the full Content-Length and the connection closed after ``nbytes``; ``times``
        requests only (None: every one)."""
        with self._lock:
            self._cuts[rel] = _Cut(nbytes, drop, times)

    def fail(self, rel: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``rel`` with ``status`` and no body."""
        with self._lock:
            self._fails[rel] = [status] * times

    def redirect(self, rel: str, location: str) -> None:
        """Answer requests for ``rel`` with a 302 to ``location``."""
        with self._lock:
            self._redirects[rel] = location

    def stall_after(self, n: int) -> None:
        """From the (n+1)-th request on (counting all received so far), accept and never answer."""
        with self._lock:
            self._stall_after = n

    def url(self, rel: str = "") -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{rel}"

    def count(self, rel: str, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if p == rel and m == method)

    # ------------------------------------------------------------------ internals
    def _admit(self, method: str, rel: str, range_header: str | None) -> str | int:
        with self._lock:
            self.requests.append((method, rel, range_header))
            if self._stall_after is not None and len(self.requests) > self._stall_after:
                return "stall"
            fails = self._fails.get(rel)
            if fails:
                return fails.pop(0)
            if rel in self._redirects:
                return "redirect:" + self._redirects[rel]
            return "serve"

    def _take_cut(self, rel: str) -> _Cut | None:
        with self._lock:
            cut = self._cuts.get(rel)
            if cut is not None and cut.times is not None:
                cut.times -= 1
                if cut.times <= 0:
                    del self._cuts[rel]
            return cut

    # ------------------------------------------------------------------ lifetime
    def start(self) -> LoopbackServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-http", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving, release stalled requests, close the socket (idempotent)."""
        self._stopping.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
