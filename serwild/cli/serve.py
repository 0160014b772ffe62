"""A local web page and API that score recordings and live streams (microphone in the browser).

    serwild serve --model exports/demo-augmented              # http://127.0.0.1:8000/
    serwild serve --model DIR --port 0                        # any free port (the line says which)
    SERWILD_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe())") \\
        serwild serve --model DIR --host 0.0.0.0              # others may connect, with the token
    curl --data-binary @rec.wav http://127.0.0.1:8000/api/predict   # per-block JSON, as predict gives

Open the page, press "Start microphone" (or play a file): each 1 s block's label appears as a
band of the timeline as soon as the block is complete, the running label large. Endpoints:
``GET /`` the page (no CDN: works offline), ``GET /api/health`` the model's classes and the
limits, ``POST /api/predict`` a recording in the body (what ``serwild predict --json`` gives
for it as a file), WebSocket ``/api/stream`` PCM chunks in, one JSON per block out
(docs/serving.md).

Safe defaults: it listens on 127.0.0.1 only, and then answers only requests whose Host (and
a browser's Origin) is this machine's own. Any other ``--host`` needs a token (``--token`` or
``SERWILD_TOKEN``, at least 16 characters) that every request must carry (``Authorization:
Bearer T``, or the page opened as ``/?token=T``); put it behind an HTTPS proxy (browsers give
the microphone only to https:// or loopback pages). No request ever names a file. Limits:
``--max-body-mb``, ``--max-seconds`` (a recording or a stream), ``--max-connections``
(recordings and streams scored at once; others get 503 / close 1013). Ctrl-C or SIGTERM stops
it with one line. The model loads as for ``predict`` (``--model`` or ``--checkpoint``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket

from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.errors import UsageError

MIN_TOKEN = 16  # characters: a token a person made up short is one an attacker can guess
LOOPBACK_NAMES = ("localhost",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR", help="an exported model folder, or a run folder (its best.pt)")
    which.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by serwild train")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--token", default=None,
                   help="required of every request (default: $SERWILD_TOKEN); needed for any --host but loopback")
    p.add_argument("--max-body-mb", type=float, default=50.0, metavar="MB",
                   help="largest recording POSTed to /api/predict (default 50)")
    p.add_argument("--max-seconds", type=float, default=3600.0, metavar="S",
                   help="longest recording or stream, in seconds (default 3600)")
    p.add_argument("--max-connections", type=int, default=8, metavar="N",
                   help="recordings and streams scored at once (default 8)")
    p.add_argument("--hop", type=float, default=None, metavar="S",
                   help="a stream's seconds between block starts (default: one block; a client may ask for another)")
    p.add_argument("--smooth", type=int, default=3, metavar="N", help="blocks in the running label (default 3)")
    p.add_argument("--root-path", default="", metavar="PREFIX",
                   help="the path prefix a reverse proxy serves this under (e.g. /serwild)")
    add_config_arguments(p, positional_overrides=True)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check(args: argparse.Namespace, token: str | None) -> None:
    """Every flag a user can get wrong, before the model loads."""
    if not is_loopback(args.host) and token is None:
        raise UsageError(f"--host {args.host} lets other machines connect: give --token (or SERWILD_TOKEN), e.g. "
                         "python -c \"import secrets; print(secrets.token_urlsafe())\"")
    if token is not None and len(token) < MIN_TOKEN:
        raise UsageError(f"the token is {len(token)} characters; use at least {MIN_TOKEN} (secrets.token_urlsafe())")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {args.port}")
    if args.max_body_mb <= 0 or args.max_seconds <= 0 or args.max_connections < 1 or args.smooth < 1:
        raise UsageError("--max-body-mb and --max-seconds must be positive, --max-connections and --smooth at least 1")
    if args.hop is not None and args.hop <= 0:
        raise UsageError(f"--hop must be positive, got {args.hop:g}")


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind first, then load nothing more: the line we print names the real port (``--port 0``)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else (os.environ.get("SERWILD_TOKEN") or None)
    check(args, token)
    try:
        import uvicorn

        from serwild.serve import Limits, ServeSettings, create_app
    except ImportError as e:
        raise UsageError(f"serve needs the serve extra ({e.name} is missing): pip install 'serwild[serve]'") from None
    from serwild.deploy.predict import Predictor

    settings = load_config(args.config, args.overrides).eval
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_seconds=args.max_seconds,
                    max_connections=args.max_connections)
    sock = listen_socket(args.host, args.port)
    model = Predictor(args.model or args.checkpoint, settings.device, verbose=True)
    app = create_app(model, ServeSettings(token=token, limits=limits, hop_s=args.hop, smooth=args.smooth))
    config = uvicorn.Config(app, log_level="warning", access_log=False, root_path=args.root_path,
                            ws_max_size=limits.max_message_bytes, timeout_graceful_shutdown=3,
                            # past the scoring slots: the page and health checks still answer, then 503
                            limit_concurrency=4 * limits.max_connections + 16, proxy_headers=False)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serwild serve: http://{shown}:{port}/ ({'token required' if token else 'this machine only'}; "
          "Ctrl-C to stop)", flush=True)
    try:
        # uvicorn closes the streams, then raises Ctrl-C / SIGTERM again: serwild's one line and exit status
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
