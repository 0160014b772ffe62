"""A real S3-compatible server on 127.0.0.1 for tests: moto's server app (the dev extra
``moto[server]``) in a thread of the test process, on a free port, stopped by ``with`` and
by itself after ``max_lifetime_s``. It can slow every upload (a publish can then be killed
mid-way for sure) and stall (accept requests, never answer). Nothing else is contacted:
``s3_env`` points every AWS client at it with dummy credentials and no instance metadata."""

from __future__ import annotations

import threading
import time
from typing import Any

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

ENDLESS_CAP = 8 << 30  # an "endless" body stops here at the latest: a broken client fails, the suite goes on


def s3_env(endpoint: str, tmp: str) -> dict[str, str]:
    """Environment for a client of ``endpoint``: dummy keys, no config files, no IMDS lookups."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": f"{tmp}/no-aws-config", "AWS_SHARED_CREDENTIALS_FILE": f"{tmp}/no-aws-credentials"}


class LoopbackS3:
    def __init__(self, max_lifetime_s: float, put_delay_s: float = 0.0) -> None:
        self.max_lifetime_s, self.put_delay_s = max_lifetime_s, put_delay_s
        self._stalled, self._stopping = threading.Event(), threading.Event()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self.requests: list[tuple[str, str]] = []
        self._endless: set[str] = set()
        self.endless_sent = 0  # bytes of endless bodies sent so far

    def _app(self, app: Any) -> Any:
        def wrapped(environ: dict, start_response: Any) -> Any:
            self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            if environ["REQUEST_METHOD"] == "GET" and environ.get("PATH_INFO", "") in self._endless:
                return self._endless_body(start_response)
            if self._stalled.is_set():
                self._stopping.wait(self.max_lifetime_s)  # silence until the server stops
            elif environ["REQUEST_METHOD"] == "PUT" and self.put_delay_s:
                time.sleep(self.put_delay_s)
            return app(environ, start_response)
        return wrapped

    def start(self) -> LoopbackS3:
        app = self._app(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        self._server.daemon_threads = True
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        serve.start()
        timer = threading.Timer(self.max_lifetime_s, self.stop)
        timer.daemon = True
        timer.start()
        self._threads = [serve]
        return self

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stall(self) -> None:
        self._stalled.set()

    def endless(self, path: str) -> None:
        """GETs of ``path`` (``/bucket/key``) ignore ``Range`` and answer with a body that does not
        end (zeros, claiming a terabyte, until the server stops or ``ENDLESS_CAP`` is sent); HEAD
        still tells the object's true size."""
        self._endless.add(path)

    def _endless_body(self, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "binary/octet-stream"), ("Content-Length", str(10**12))])
        chunk = bytes(1 << 20)

        def body() -> Any:
            for _ in range(ENDLESS_CAP >> 20):
                if self._stopping.is_set():
                    return
                self.endless_sent += len(chunk)
                yield chunk
        return body()

    def stop(self) -> None:
        if not self._stopping.is_set():
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LoopbackS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
