"""Score a live stream, one line per 1 s block as soon as the block is complete.

    arecord -f S16_LE -r 16000 -c 1 -t wav - | serwild listen --model exports/demo-augmented
    sox -d -t wav - | serwild listen --model exports/demo-augmented --hop 0.5
    ffmpeg -i talk.mp3 -f s16le -ar 16000 -ac 1 - | serwild listen --model DIR --raw --rate 16000
    cat rec.wav | serwild listen --model DIR --json          # one JSON object per block
    serwild listen --model DIR --mic [--device N]             # the microphone (pip install 'serwild[mic]')

Standard input is a WAV stream (PCM, any rate and channels; the header is read first, a pipe
needs no length) or, with ``--raw``, headerless little-endian PCM (``--rate``, ``--channels``,
``--format s16le|s32le|f32le``); with ``--mic``, the default input device (or ``--device``, a
number or a name from ``python -m sounddevice``) through PortAudio, at ``--rate``. Each block is
cut, rendered and scored as ``serwild predict`` scores the same samples, so with the default hop
(one block) the labels are those of ``serwild predict`` on the whole recording. A silent block
is reported as silence. Each line gives the block's start, its label and probability, the
running label over the last ``--smooth`` scored blocks and the latency from the block's last
sample to its result.
The model loads as for ``predict`` (``--model`` an export or a run folder, or ``--checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import sys
import wave
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

import numpy as np

from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.deploy.predict import Predictor
from serwild.errors import UsageError

FORMATS = {"s16le": np.dtype("<i2"), "s32le": np.dtype("<i4"), "f32le": np.dtype("<f4")}
WIDTHS = {2: np.dtype("<i2"), 4: np.dtype("<i4")}  # WAV PCM sample widths read here (bytes)
CHUNK_S = 0.1  # read a tenth of a second at a time: a block's latency is bounded by it


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR", help="an exported model folder, or a run folder (its best.pt)")
    which.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by serwild train")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--raw", action="store_true", help="standard input is headerless PCM, not WAV")
    source.add_argument("--mic", action="store_true",
                        help="read the microphone (the sounddevice package: pip install 'serwild[mic]')")
    p.add_argument("--device", default=None, metavar="DEV", help="--mic: an input device number or name")
    p.add_argument("--rate", type=int, default=16000, help="--raw, --mic: the sample rate in Hz (default 16000)")
    p.add_argument("--channels", type=int, default=1, help="--raw, --mic: interleaved channels (default 1)")
    p.add_argument("--format", choices=sorted(FORMATS), default="s16le", help="--raw: the sample format")
    p.add_argument("--hop", type=float, default=None, metavar="S",
                   help="seconds between block starts (default: one block; 0.5 gives overlapping blocks)")
    p.add_argument("--smooth", type=int, default=3, metavar="N", help="blocks in the running label (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per block")
    add_config_arguments(p, positional_overrides=True)


def wav_chunks(stream: BinaryIO) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, chunks of (frames, channels)) of a WAV stream read as it arrives."""
    try:
        w = wave.open(stream, "rb")  # noqa: SIM115 - read by the generator below, as the stream arrives
    except (wave.Error, EOFError) as e:
        raise UsageError(f"standard input is not a PCM WAV stream ({e}): give one, or --raw with --rate") from None
    if w.getsampwidth() not in WIDTHS:
        raise UsageError(f"WAV samples of {8 * w.getsampwidth()} bits are not read here: use 16- or 32-bit PCM, "
                         "or --raw --format f32le")
    rate, channels, dtype = w.getframerate(), w.getnchannels(), WIDTHS[w.getsampwidth()]
    frames = max(1, int(rate * CHUNK_S))

    def chunks() -> Iterator[np.ndarray]:
        while data := w.readframes(frames):
            yield np.frombuffer(data, dtype=dtype).reshape(-1, channels)

    return rate, chunks()


def raw_chunks(stream: BinaryIO, rate: int, channels: int, fmt: str) -> Iterator[np.ndarray]:
    dtype = FORMATS[fmt]
    frame = dtype.itemsize * channels
    size = max(1, int(rate * CHUNK_S)) * frame
    rest = b""
    while data := stream.read(size):
        data, rest = rest + data, b""
        cut = len(data) - len(data) % frame
        data, rest = data[:cut], data[cut:]
        if data:
            yield np.frombuffer(data, dtype=dtype).reshape(-1, channels)


class InputStream(Protocol):
    """What :func:`mic_chunks` reads: sounddevice's blocking ``InputStream`` API."""

    def read(self, frames: int) -> tuple[np.ndarray, bool]: ...


def mic_chunks(stream: InputStream, rate: int) -> Iterator[np.ndarray]:
    """(frames, channels) float32 chunks of a started input stream, a tenth of a second each, until
    the user stops it (Ctrl-C). An overflow (the machine fell behind) is said, once per time."""
    frames = max(1, int(rate * CHUNK_S))
    while True:
        data, overflowed = stream.read(frames)
        if overflowed:
            print("serwild listen: note: the input overflowed (samples were lost: the machine fell behind)",
                  file=sys.stderr, flush=True)
        yield np.asarray(data, dtype=np.float32)


def open_mic(device: str | None, rate: int, channels: int) -> Any:
    """A started sounddevice input stream, or one line saying why there is none."""
    try:
        import sounddevice as sd
    except ImportError as e:  # the package, or PortAudio under it (OSError subclasses are caught below)
        raise UsageError(f"--mic needs the sounddevice package and PortAudio ({e}): pip install 'serwild[mic]' "
                         "(and libportaudio2 on Debian), or pipe audio in: arecord -t wav - | serwild listen …"
                         ) from None
    except OSError as e:
        raise UsageError(f"--mic: PortAudio could not be loaded ({e}): install it (Debian: libportaudio2)") from None
    which: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        stream = sd.InputStream(samplerate=rate, channels=channels, dtype="float32", device=which)
        stream.start()
    except (sd.PortAudioError, ValueError) as e:
        raise UsageError(f"--mic: no input at {rate} Hz, {channels} channel(s) on device {device or 'default'} "
                         f"({e}): see `python -m sounddevice`") from None
    return stream


def run(args: argparse.Namespace) -> int:
    if args.channels < 1 or args.smooth < 1:
        raise UsageError("--channels and --smooth must be at least 1")
    settings = load_config(args.config, args.overrides).eval
    model = Predictor(args.model or args.checkpoint, settings.device, verbose=True)
    source, mic = sys.stdin.buffer, None
    if args.mic:  # opened once the model is loaded: a stream started earlier would overflow meanwhile
        mic = open_mic(args.device, args.rate, args.channels)
        rate, chunks = args.rate, mic_chunks(mic, args.rate)
    elif args.raw:
        rate, chunks = args.rate, raw_chunks(source, args.rate, args.channels, args.format)
    else:
        rate, chunks = wav_chunks(source)
    try:
        for r in model.stream(chunks, rate, hop_s=args.hop, smooth=args.smooth):
            if args.json:
                print(json.dumps(r.to_dict(), allow_nan=False), flush=True)
            else:
                what = "silence" if r.silent else f"{r.label} {max(r.probs.values()):.2f}"  # type: ignore[union-attr]
                print(f"{r.start_s:8.2f} s  {what:<12} running {r.running_label or '-':<6} "
                      f"{r.latency_ms:5.0f} ms", flush=True)
    except ValueError as e:  # NaN samples, a hop or rate out of range
        raise UsageError(str(e)) from None
    finally:
        if mic is not None:
            mic.close()
    return 0
