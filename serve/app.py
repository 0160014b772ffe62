"""The ASGI app of ``serwild serve``: a page, a health check, a whole-recording endpoint and a
live WebSocket stream, all over one loaded :class:`Predictor`.

Without a token the server is for this machine only: every request must name a loopback Host and,
when a browser sends one, an Origin on the same host and port, since a WebSocket has no CORS and DNS
rebinding can point any name at 127.0.0.1. With a token, every request must carry it (``?token=T``
too: a browser's WebSocket cannot set headers) and Host/Origin are left to the proxy in front. No
request ever names a file. ``max_message_bytes`` is enforced by the server's WebSocket layer, not here.
Security model and limits: docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from serwild.builder import audio
from serwild.builder.audio import AudioError
from serwild.deploy.predict import Predictor

FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}  # what a stream's chunks may be
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
MAX_PENDING_CHUNKS = 32  # chunks received but not yet scored: past it, stop reading (TCP backpressure)
UPLOAD_NAME = "<upload>"  # the ``file`` of a POSTed recording: never a path of ours or the client's


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 50 * 2**20  # a POSTed recording (50 MiB: ~26 min of 16 kHz 16-bit mono WAV)
    max_seconds: float = 3600.0  # a recording or a stream (a lesson)
    max_connections: int = 8  # scoring at once (POSTs and streams): 2 cores keep up with 16 AlexNet streams
    idle_s: float = 60.0  # a stream with no message for this long is closed (it holds a slot)
    max_message_bytes: int = 2**20  # one WebSocket message (1 s of 48 kHz stereo float32 is 384 KB)


@dataclass(frozen=True)
class ServeSettings:
    token: str | None = None  # None: loopback use only (Host and Origin are checked instead)
    limits: Limits = field(default_factory=Limits)
    hop_s: float | None = None  # a stream's default hop (None: one block); a client may ask for another
    smooth: int = 3  # a stream's default running-label window


class Refused(Exception):
    """A request we turn down: its status (HTTP) and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- access


def _host_name(netloc: str) -> str:
    """``host[:port]`` → host (an IPv6 literal without its brackets)."""
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def access_refusal(scope: Scope, token: str | None) -> tuple[int, str] | None:
    """Why a request may not pass (status, message), or None."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    if token is not None:
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        # compare_digest: the time taken does not tell how much of a guess was right
        if not hmac.compare_digest(given.encode(), token.encode()):
            return 401, "a token is required: Authorization: Bearer <token>, or ?token=<token>"
        return None
    host = headers.get("host", "")
    if _host_name(host) not in LOOPBACK_NAMES:
        return 403, f"Host {host!r} refused: without --token this server answers only to 127.0.0.1/localhost"
    origin = headers.get("origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
        return 403, f"Origin {origin!r} refused: only this server's own page may call it"
    return None


class Guard:
    """ASGI middleware: :func:`access_refusal` for every HTTP request and WebSocket."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = access_refusal(scope, self.token) if scope["type"] in ("http", "websocket") else None
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await JSONResponse({"error": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        else:  # closing before accepting: the handshake gets HTTP 403
            await send({"type": "websocket.close", "code": 1008, "reason": refusal[1][:120]})


class Slots:
    """At most ``n`` scoring connections (one event loop: a counter needs no lock)."""

    def __init__(self, n: int) -> None:
        self.n, self.busy = n, 0

    @contextlib.contextmanager
    def take(self) -> Iterator[bool]:
        got = self.busy < self.n
        self.busy += got
        try:
            yield got
        finally:
            self.busy -= got


# ----------------------------------------------------------------------------- app


def create_app(model: Predictor, settings: ServeSettings | None = None) -> ASGIApp:
    settings = settings or ServeSettings()
    limits = settings.limits
    slots = Slots(limits.max_connections)
    page = resources.files("serwild.serve").joinpath("page.html").read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        # no-store: the page carries no secret, but a token in its URL should not sit in a cache
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def health(request: Request) -> Response:
        return JSONResponse(health_info(model, settings, slots.busy))

    async def predict(request: Request) -> Response:
        try:
            with slots.take() as got:
                if not got:
                    raise Refused(503, f"busy: {limits.max_connections} recordings or streams are being scored; "
                                  "try again later")
                return JSONResponse(await predict_body(model, request, limits))
        except Refused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)

    async def stream(ws: WebSocket) -> None:
        with slots.take() as got:
            await ws.accept()
            if not got:
                await _close(ws, 1013, f"busy: {limits.max_connections} recordings or streams are being scored; "
                             "try again later")
                return
            await stream_session(model, ws, settings)

    routes = [Route("/", index), Route("/api/health", health), Route("/api/predict", predict, methods=["POST"]),
              WebSocketRoute("/api/stream", stream)]
    return Guard(Starlette(routes=routes), settings.token)


def health_info(model: Predictor, settings: ServeSettings, busy: int) -> dict[str, Any]:
    a = model.renderer.cfg
    return {"status": "ok", "arch": str(model.info.get("arch", "alexnet")), "classes": model.classes,
            "block_seconds": a.block_seconds, "sample_rate": a.sample_rate, "device": str(model.device),
            "hop_s": settings.hop_s or a.block_seconds, "smooth": settings.smooth,
            "formats": sorted(FORMATS), "limits": asdict(settings.limits), "busy": busy,
            "token_required": settings.token is not None}


# ----------------------------------------------------------------------------- POST /api/predict


async def predict_body(model: Predictor, request: Request, limits: Limits) -> dict[str, Any]:
    """The body (a whole recording) → what ``serwild predict --json`` gives for it as a file."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise Refused(413, f"the body is {int(declared)} bytes; the limit is {limits.max_body_bytes} "
                      "(serwild serve --max-body-mb)")
    with tempfile.TemporaryDirectory(prefix="serwild-serve-") as tmp:
        path = Path(tmp) / "upload"  # our name: soundfile reads the format from the bytes, not the name
        size = 0
        with open(path, "wb") as f:
            async for piece in request.stream():
                size += len(piece)
                if size > limits.max_body_bytes:  # a chunked body has no length to check up front
                    raise Refused(413, f"the body passed the limit of {limits.max_body_bytes} bytes "
                                  "(serwild serve --max-body-mb)")
                f.write(piece)
        if size == 0:
            raise Refused(400, "the body is empty: send a recording (WAV, FLAC or OGG) as the request body")
        result = await run_in_threadpool(_score_file, model, path, limits.max_seconds)
    if result.get("error") is not None:
        raise Refused(422, str(result["error"]))
    return result


def _score_file(model: Predictor, path: Path, max_seconds: float) -> dict[str, Any]:
    try:
        info = audio.probe(path)
    except AudioError as e:
        return {"error": str(e)}
    if info.seconds > max_seconds:
        raise Refused(413, f"the recording is {info.seconds:.0f} s long; the limit is {max_seconds:g} s "
                      "(serwild serve --max-seconds)")
    res = model.predict_file(path)
    res.file = UPLOAD_NAME
    return res.to_dict()


# ----------------------------------------------------------------------------- WebSocket /api/stream


@dataclass(frozen=True)
class StreamStart:
    """A stream's first message: how its binary chunks are to be read."""

    sample_rate: int
    format: str = "f32le"
    channels: int = 1
    hop_s: float | None = None
    smooth: int = 3

    @property
    def dtype(self) -> np.dtype:
        return FORMATS[self.format]


def parse_start(text: str, settings: ServeSettings) -> StreamStart:
    """The first message (JSON) → StreamStart; ValueError with one line for anything off."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict) or "sample_rate" not in msg:
        raise ValueError('the first message must be JSON like {"sample_rate": 16000, "format": "s16le"}')
    unknown = set(msg) - {"type", "sample_rate", "format", "channels", "hop_s", "smooth"}
    if unknown:
        raise ValueError(f"unknown keys in the first message: {', '.join(sorted(unknown))}")
    rate, fmt, channels = msg["sample_rate"], msg.get("format", "f32le"), msg.get("channels", 1)
    hop, smooth = msg.get("hop_s", settings.hop_s), msg.get("smooth", settings.smooth)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ValueError(f"sample_rate must be a whole number of Hz, got {rate!r}")
    try:
        audio.check_rate(rate)
    except AudioError as e:
        raise ValueError(str(e)) from None
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(sorted(FORMATS))}, got {fmt!r}")
    if not isinstance(channels, int) or not 1 <= channels <= 8:
        raise ValueError(f"channels must be 1 to 8, got {channels!r}")
    if hop is not None and (not isinstance(hop, (int, float)) or isinstance(hop, bool)):
        raise ValueError(f"hop_s must be a number of seconds, got {hop!r}")
    if not isinstance(smooth, int) or not 1 <= smooth <= 100:
        raise ValueError(f"smooth must be 1 to 100 blocks, got {smooth!r}")
    return StreamStart(rate, fmt, channels, None if hop is None else float(hop), smooth)


async def stream_session(model: Predictor, ws: WebSocket, settings: ServeSettings) -> None:
    """One live stream: a start message, PCM chunks, then ``{"type": "end"}`` or a disconnect. The
    model runs in a thread of the stream's own (``Predictor.stream`` pulls chunks from a queue as they
    come), so the event loop keeps reading every client while blocks are scored."""
    limits = settings.limits
    start = await _handshake(model, ws, settings)
    if start is None:
        return
    loop = asyncio.get_running_loop()
    chunks: queue.Queue[np.ndarray | None] = queue.Queue()
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    pending = asyncio.Semaphore(MAX_PENDING_CHUNKS)

    def tell(fn: Any, *args: Any) -> None:  # on the event loop, from the scoring thread (if the loop lives)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def pull() -> Iterator[np.ndarray]:
        while (chunk := chunks.get()) is not None:
            tell(pending.release)
            yield chunk

    def score() -> None:
        out: dict[str, Any] = {"type": "end"}
        try:
            for r in model.stream(pull(), start.sample_rate, hop_s=start.hop_s, smooth=start.smooth):
                tell(results.put_nowait, {"type": "block", **r.to_dict()})
        except ValueError as e:  # NaN samples, a hop out of range
            out = {"type": "error", "error": str(e)}
        except Exception as e:  # never a silent dead stream: the client is told, the server goes on
            out = {"type": "error", "error": f"scoring failed: {type(e).__name__}: {e}"}
        tell(results.put_nowait, out)
        for _ in range(MAX_PENDING_CHUNKS):  # nothing reads the queue now: a reader waiting on room goes on
            tell(pending.release)

    worker = threading.Thread(target=score, name="serwild-stream", daemon=True)
    worker.start()
    broken: list[str] = []  # why the client's stream broke a rule, if it did: then no "end" message
    sender = asyncio.create_task(_send_results(ws, results, broken))
    try:
        reason = await _receive_chunks(ws, start, limits, chunks, pending, sender)
        broken += [reason] if reason is not None else []
    finally:
        chunks.put(None)  # the scoring thread ends after the chunks already queued
    code, why = await sender  # the blocks already received still go out, whatever ended the stream
    said = not broken  # an error from scoring was sent as it came; a broken rule is said after the blocks
    await asyncio.to_thread(worker.join)
    await _close(ws, code, why, said=said)


async def _handshake(model: Predictor, ws: WebSocket, settings: ServeSettings) -> StreamStart | None:
    """The stream's start message, answered with ``ready`` (the model's classes and the settings
    in force); None once the socket is closed for a missing or bad one."""
    try:
        first = await asyncio.wait_for(ws.receive_text(), settings.limits.idle_s)
        start = parse_start(first, settings)
    except (asyncio.TimeoutError, WebSocketDisconnect, KeyError, RuntimeError):
        await _close(ws, 1008, "no start message: send {\"sample_rate\": …} first, as text")
        return None
    except ValueError as e:
        await _close(ws, 1008, str(e))
        return None
    a = model.renderer.cfg
    await ws.send_json({"type": "ready", "classes": model.classes, "block_seconds": a.block_seconds,
                        "sample_rate": start.sample_rate, "format": start.format, "channels": start.channels,
                        "hop_s": start.hop_s or a.block_seconds, "smooth": start.smooth,
                        "max_seconds": settings.limits.max_seconds})
    return start


async def _receive_chunks(ws: WebSocket, start: StreamStart, limits: Limits, chunks: queue.Queue,
                          pending: asyncio.Semaphore, sender: asyncio.Task) -> str | None:
    """Read messages until the end; the reason to close for a broken rule, or None."""
    frame = start.dtype.itemsize * start.channels
    frames = 0
    while not sender.done():  # the sender stops first when scoring failed (it said why)
        try:
            msg = await asyncio.wait_for(ws.receive(), limits.idle_s)
        except asyncio.TimeoutError:
            return f"no audio for {limits.idle_s:g} s: stream closed"
        if msg["type"] == "websocket.disconnect":
            return None
        data, text = msg.get("bytes"), msg.get("text")
        if text is not None:
            if _is_end(text):
                return None
            return 'text after the start message must be {"type": "end"}; audio goes in binary messages'
        if not data:
            continue
        if len(data) % frame:
            return f"a chunk of {len(data)} bytes is not whole frames of {frame} bytes ({start.format}, " \
                   f"{start.channels} channel(s))"
        frames += len(data) // frame
        if frames / start.sample_rate > limits.max_seconds:
            return f"the stream passed {limits.max_seconds:g} s (serwild serve --max-seconds)"
        await pending.acquire()
        chunks.put(np.frombuffer(data, dtype=start.dtype).reshape(-1, start.channels))
    return None


def _is_end(text: str) -> bool:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "end"


async def _send_results(ws: WebSocket, results: asyncio.Queue, broken: list[str]) -> tuple[int, str]:
    """Send each block as it is scored; the close code and reason once scoring has ended."""
    while True:
        msg = await results.get()
        if msg["type"] == "end" and broken:
            return 1008, broken[0]
        with contextlib.suppress(Exception):  # the client may be gone; scoring still ends cleanly
            await ws.send_json(msg)
        if msg["type"] == "end":
            return 1000, "end of stream"
        if msg["type"] == "error":
            return 1008, str(msg["error"])


async def _close(ws: WebSocket, code: int, reason: str, said: bool = False) -> None:
    """Say why (a JSON error first: a browser shows a close reason poorly), then close."""
    with contextlib.suppress(Exception):
        if code != 1000 and not said:
            await ws.send_json({"type": "error", "error": reason})
        await ws.close(code, reason[:120])  # a close frame's reason is at most 123 bytes

