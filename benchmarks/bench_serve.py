"""How many live streams ``serwild serve`` keeps up with: N browsers' worth of microphones at once.

    .venv/bin/python benchmarks/bench_serve.py                      # alexnet, 1 to 12 streams, 20 s each
    .venv/bin/python benchmarks/bench_serve.py --arch tiny --streams 1 4 8 16

The real command (``serwild serve`` on 127.0.0.1, as a user starts it, torch's default threads)
around a randomly initialised network of the chosen architecture (the cost of a block does not
depend on the weights). Each client is a WebSocket that sends speech-like float32 PCM at 16 kHz
in 0.1 s chunks at real-time pace, as the page does, for ``--seconds``; N clients run at once.
Per block, the latency is from sending the chunk that completes the block to receiving its
result. The server *keeps up* with N streams when every block comes back and the p95 latency
stays under one block (1 s): a longer lag grows without bound, since audio keeps arriving.
The clients share the machine's cores with the server (their cost is small: no rendering).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import checkpoint  # noqa: E402  (a random-init checkpoint of an architecture)

SR = 16000
CHUNK = SR // 10


def speech(seconds: int, seed: int) -> np.ndarray:
    t = np.arange(seconds * SR) / SR
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    y = sum(np.sin(phase * k) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * y / np.abs(y).max()).astype("<f4")


async def one_stream(url: str, seconds: int, seed: int) -> list[float]:
    """Latencies (ms) of one real-time stream's blocks."""
    from websockets.asyncio.client import connect

    pcm = speech(seconds, seed)
    sent: dict[int, float] = {}  # chunk index → when it went
    got: dict[int, float] = {}
    async with connect(url, max_size=2**20) as ws:
        await ws.send(json.dumps({"sample_rate": SR, "format": "f32le"}))
        json.loads(await ws.recv())

        async def receive() -> None:
            async for msg in ws:
                m = json.loads(msg)
                if m["type"] == "block":
                    got[m["block"]] = time.perf_counter()
                elif m["type"] in ("end", "error"):
                    return

        reader = asyncio.create_task(receive())
        start = time.perf_counter()
        for i in range(len(pcm) // CHUNK):
            await asyncio.sleep(max(0.0, start + i * 0.1 - time.perf_counter()))  # real-time pace
            sent[i] = time.perf_counter()
            await ws.send(pcm[i * CHUNK:(i + 1) * CHUNK].tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(reader, timeout=120)
    # block b is complete with chunk 10(b+1)-1
    return [(got[b] - sent[10 * (b + 1) - 1]) * 1e3 if b in got else float("inf") for b in range(seconds)]


async def round_of(url: str, n: int, seconds: int) -> np.ndarray:
    lat = await asyncio.gather(*(one_stream(url, seconds, seed) for seed in range(n)))
    return np.array([x for one in lat for x in one])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="alexnet")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 6, 8, 10, 12])
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp) / f"{args.arch}.pt", args.arch)
        proc = subprocess.Popen([sys.executable, "-m", "serwild", "serve", "--checkpoint", str(ckpt), "--port", "0",
                                 "--max-connections", str(max(args.streams)), "eval.device=cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "SERWILD_TOKEN": ""})
        try:
            base = proc.stdout.readline().split()[2]  # type: ignore[union-attr]
            url = base.replace("http://", "ws://") + "api/stream"
            asyncio.run(round_of(url, 1, 3))  # warm-up: the first blocks allocate (2 s of latency, not load)
            print(f"{args.arch} (random weights), {os.cpu_count()} cores, {args.seconds} s per stream, 0.1 s chunks")
            print(f"{'streams':>8}{'blocks':>8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  keeps up")
            for n in args.streams:
                lat = asyncio.run(round_of(url, n, args.seconds))
                ok = bool(np.isfinite(lat).all() and np.percentile(lat, 95) < 1000)
                print(f"{n:>8}{len(lat):>8}{np.percentile(lat, 50):>9.0f}{np.percentile(lat, 95):>9.0f}"
                      f"{lat.max():>9.0f}  {'yes' if ok else 'no'}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
