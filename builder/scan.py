"""Scan inputs before planning: which blocks of each utterance are usable, which noise files can be mixed in, and
why the others cannot. The plan needs exact block counts, so each file is read once here (Ray tasks over chunks of
utterances); only these small records travel back to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serwild.builder import audio
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject, Utterance
from serwild.builder.render import Renderer
from serwild.errors import UsageError


@dataclass(frozen=True)
class ScannedUtterance:
    utt: Utterance
    native_sr: int
    blocks: tuple[int, ...]  # usable block indices


@dataclass(frozen=True)
class NoiseFile:
    name: str  # relative to the noise dir
    path: str
    length: int  # samples at the target rate
    split_at: int  # samples [0, split_at) are for training, [split_at, length) for test


def scan_utterance(u: Utterance, renderer: Renderer) -> tuple[ScannedUtterance | None, list[Reject]]:
    try:
        found = renderer.scan(u.path, segment=u.segment)
    except audio.AudioError as e:
        return None, [Reject(u.id, str(e), "audio", u.path)]
    rejects = [Reject(u.id, "silent block (below -80 dBFS)", "audio", u.path, b) for b in found.silent]
    return ScannedUtterance(u, found.info.sample_rate, found.usable), rejects


def scan_chunk(utts: list[Utterance], cfg: AudioConfig) -> tuple[list[ScannedUtterance], list[Reject]]:
    """A Ray task's worth of :func:`scan_utterance`."""
    ok: list[ScannedUtterance] = []
    rejects: list[Reject] = []
    renderer = Renderer(cfg)
    for u in utts:
        s, r = scan_utterance(u, renderer)
        rejects.extend(r)
        if s is not None:
            ok.append(s)
    return ok, rejects


def scan_noise(noise_dir: Path, cfg: AudioConfig, test_fraction: float) -> tuple[list[NoiseFile], list[Reject]]:
    """Usable noise files, each cut in time into a training part and a held-out test part."""
    if not noise_dir.is_dir():
        raise UsageError(f"noise.dir {noise_dir} does not exist")
    files = sorted(p for p in noise_dir.rglob("*") if p.suffix.lower() in {".wav", ".flac", ".ogg"})
    if not files:
        raise UsageError(f"noise.dir {noise_dir} has no .wav/.flac/.ogg files")
    block = int(round(cfg.block_seconds * cfg.sample_rate))
    good: list[NoiseFile] = []
    rejects: list[Reject] = []
    for p in files:
        name = str(p.relative_to(noise_dir))
        try:
            y = load_noise(str(p), cfg.sample_rate)
        except audio.AudioError as e:
            rejects.append(Reject(name, str(e), "noise", str(p)))
            continue
        split_at = int(len(y) * (1.0 - test_fraction))
        if split_at < block or len(y) - split_at < block:
            need = block / cfg.sample_rate / min(test_fraction, 1 - test_fraction)
            rejects.append(Reject(name, f"too short to give both training and test noise "
                                  f"({len(y) / cfg.sample_rate:.2f} s, needs >= {need:.1f} s)", "noise", str(p)))
        elif float(np.max(np.abs(y))) < audio.SILENCE_PEAK:
            rejects.append(Reject(name, "silent noise file", "noise", str(p)))
        else:
            good.append(NoiseFile(name, str(p), len(y), split_at))
    if not good:
        raise UsageError(f"noise.dir {noise_dir}: no usable noise file ({len(rejects)} rejected, "
                         f"first: {rejects[0].item}: {rejects[0].reason})")
    return good, rejects


def load_noise(path: str, sample_rate: int) -> np.ndarray:
    """A whole noise file, mono, at the target rate."""
    y, sr = audio.read_mono(path)
    return audio.resample(y, sr, sample_rate)
