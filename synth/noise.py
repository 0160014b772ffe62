"""Classroom-like noise recordings for the synthetic corpus (``serwild synth`` writes them).

Four files, each a different way a room masks speech: ``babble`` (several overlapping
synthetic talkers in a reverberant room, unintelligible), ``ventilation`` (mains hum, fan
blade tones, rumbling air; 44.1 kHz), ``chairs_doors`` (scrapes, knocks, door slams and
footsteps over a low background; 22.05 kHz) and ``classroom`` (all of it at once). The
other sample rates exercise the builder's resampling. There is always a background: no
1 s window is digital silence, so every noise segment has power to set an SNR with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from serwild.progress import progress as progress_bar
from serwild.synth import voice


def colored(n: int, sr: int, rng: np.random.Generator, slope_db: float = -3.0, knee: float = 100.0,
            top: float = 7000.0) -> np.ndarray:
    """Noise of unit RMS whose power falls ``slope_db`` per octave above ``knee`` Hz and rolls
    off above ``top`` Hz (-3 dB/octave is pink; rooms and fans are steeper, about -5)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    gain = (1.0 + (f / knee) ** 2) ** (slope_db / 20.0 / 2.0 / np.log10(2.0))  # amplitude ∝ f^(slope/6)
    spec *= gain / (1.0 + (f / top) ** 4) / (1.0 + (20.0 / np.maximum(f, 1.0)) ** 2)
    y = np.fft.irfft(spec, n)
    return y / max(float(np.std(y)), 1e-12)


def band(y: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    """A band-pass with gentle (4th-order-like) skirts, applied in the frequency domain."""
    spec = np.fft.rfft(y)
    f = np.maximum(np.fft.rfftfreq(len(y), 1.0 / sr), 1.0)
    return np.fft.irfft(spec / (1.0 + (lo / f) ** 4) / (1.0 + (f / hi) ** 4), len(y))


def reverb(y: np.ndarray, sr: int, rt60: float, wet: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with an exponentially decaying noise tail (a plain room impulse response)."""
    n_ir = int(rt60 * sr)
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * np.arange(n_ir) / n_ir)  # -60 dB at rt60
    ir /= np.sqrt(np.sum(ir**2))
    n = len(y) + n_ir
    tail = np.fft.irfft(np.fft.rfft(y, n) * np.fft.rfft(ir, n), n)[: len(y)]
    return (1.0 - wet) * y + wet * tail


# ----------------------------------------------------------------------------- sources


def babble(seconds: float, rng: np.random.Generator, talkers: int = 6, sr: int = voice.SR) -> np.ndarray:
    """Overlapping talkers, each taking turns of 1.5-6 s with short gaps, in a reverberant room."""
    n = int(seconds * sr)
    out = np.zeros(n)
    for k in range(talkers):
        v = voice.random_voice("FM"[k % 2], rng)
        t = int(rng.uniform(0.0, 1.0) * sr)
        gain = float(rng.uniform(0.5, 1.0))
        while t < n:
            length = int(rng.uniform(1.5, 6.0) * sr)
            label = str(rng.choice(["neu", "neu", "hap", "exc", "ang", "sad", "fru"]))
            y = voice.synthesize(length, v, voice.utterance_style(label, rng), rng)
            m = min(length, n - t)
            out[t:t + m] += gain * y[:m] / max(float(np.std(y)), 1e-12)
            t += m + int(rng.uniform(0.05, 0.8) * sr)
    out = reverb(out, sr, rt60=0.6, wet=0.5, rng=rng)
    return out + 0.01 * float(np.std(out)) * colored(n, sr, rng)


def ventilation(seconds: float, rng: np.random.Generator, sr: int = 44100) -> np.ndarray:
    """Air-handling noise: rumbling air with a slow swell and some hiss, mains hum, a fan's tone."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    air = colored(n, sr, rng, slope_db=-5.0, knee=150.0, top=6000.0) + 0.02 * colored(n, sr, rng, 0.0, 1e3)
    air *= 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    mains = float(rng.choice([50.0, 60.0]))
    hum = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h**1.5 for h in range(1, 8))
    blade = float(rng.uniform(110.0, 190.0))
    wobble = 1.0 + 0.004 * np.sin(2 * np.pi * 0.3 * t)  # the fan's speed drifts a little
    fan = sum(np.sin(2 * np.pi * blade * h * np.cumsum(wobble) / sr) / h for h in range(1, 5))
    return air + 0.35 * hum + 0.25 * fan


def transients(seconds: float, rng: np.random.Generator, sr: int = 22050, rate_hz: float = 0.5,
               background: float = 0.02) -> np.ndarray:
    """Chair scrapes, door slams, knocks and footsteps at random times, over a low room-tone floor."""
    n = int(seconds * sr)
    out = background * colored(n, sr, rng, slope_db=-5.0, knee=120.0, top=5000.0)
    events: list[Callable[[int, np.random.Generator], np.ndarray]] = [_scrape, _door, _knocks, _steps]
    t = rng.exponential(1.0 / rate_hz)
    while t < seconds:
        y = events[int(rng.integers(len(events)))](sr, rng) * float(rng.uniform(0.2, 1.0))
        i = int(t * sr)
        m = min(len(y), n - i)
        out[i:i + m] += y[:m]
        t += rng.exponential(1.0 / rate_hz)
    return reverb(out, sr, rt60=0.5, wet=0.3, rng=rng)


def _scrape(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A chair dragged: band noise whose centre glides, with a rough stick-slip flutter."""
    n = int(rng.uniform(0.2, 0.9) * sr)
    t = np.arange(n) / sr
    centre = rng.uniform(400, 1200) * (1.0 + rng.uniform(-0.4, 0.6) * t / t[-1])
    carrier = np.sin(2 * np.pi * np.cumsum(centre) / sr)
    rough = band(rng.standard_normal(n), sr, 300.0, 3000.0)
    flutter = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * rng.uniform(15, 40) * t))
    env = np.sqrt(np.maximum(np.sin(np.pi * t / t[-1]), 0.0))
    y = (0.6 * carrier + rough / max(float(np.std(rough)), 1e-12)) * flutter * env
    return 0.3 * y


def _door(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A door closing: a low thump, a click, and the panel ringing down."""
    n = int(0.6 * sr)
    t = np.arange(n) / sr
    thump = np.sin(2 * np.pi * rng.uniform(60, 110) * t) * np.exp(-t / 0.06)
    ring = np.sin(2 * np.pi * rng.uniform(500, 1200) * t) * np.exp(-t / 0.12) * 0.3
    click = rng.standard_normal(n) * np.exp(-t / 0.004)
    return 0.8 * (thump + ring + 0.5 * click)


def _knocks(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Two to four knocks on wood (or a pen on a desk): short decaying resonances."""
    gap, count = int(rng.uniform(0.12, 0.25) * sr), int(rng.integers(2, 5))
    n = gap * count + int(0.1 * sr)
    t = np.arange(int(0.1 * sr)) / sr
    f = rng.uniform(250, 2500)
    knock = (np.sin(2 * np.pi * f * t) + 0.5 * rng.standard_normal(len(t))) * np.exp(-t / 0.015)
    out = np.zeros(n)
    for i in range(count):
        out[i * gap:i * gap + len(t)] += knock * rng.uniform(0.6, 1.0)
    return 0.4 * out


def _steps(sr: int, rng: np.random.Generator) -> np.ndarray:
    """Footsteps: soft low thumps about twice a second."""
    count, gap = int(rng.integers(3, 7)), int(rng.uniform(0.45, 0.6) * sr)
    t = np.arange(int(0.15 * sr)) / sr
    step = band(rng.standard_normal(len(t)), sr, 40.0, 600.0) * np.exp(-t / 0.03)
    out = np.zeros(gap * count + len(t))
    for i in range(count):
        out[i * gap:i * gap + len(t)] += step * rng.uniform(0.5, 1.0)
    return 0.25 * out / max(float(np.max(np.abs(step))), 1e-12)


def classroom(seconds: float, rng: np.random.Generator, sr: int = voice.SR) -> np.ndarray:
    """A class in session: distant babble, the ventilation, and chairs and doors, together."""
    b = babble(seconds, rng, talkers=4, sr=sr)
    v = ventilation(seconds, rng, sr=sr)
    e = transients(seconds, rng, sr=sr, rate_hz=0.3, background=0.0)
    b, v = b / np.std(b), v / np.std(v)
    return b + 0.4 * v + 2.0 * e


# ----------------------------------------------------------------------------- files

# name → (generator, sample rate); seconds scale with the corpus size.
NOISES: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "babble": (babble, 16000),
    "ventilation": (ventilation, 44100),
    "chairs_doors": (transients, 22050),
    "classroom": (classroom, 16000),
}


def write_noise(folder: Path, seconds: float, seed: int, progress: bool = False) -> list[dict]:
    """Write every noise file into ``folder``; returns ``[{file, sample_rate, seconds}]``."""

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with progress_bar(len(NOISES), "noise", unit="file", command="synth", enabled=progress) as bar:
        for name, (make, sr) in NOISES.items():
            written.append(_write_one(folder, name, make, sr, seconds, seed))
            bar.update(1)
    return written


def _write_one(folder: Path, name: str, make: Any, sr: int, seconds: float, seed: int) -> dict:
    """One noise file, written; its ``{file, sample_rate, seconds}``."""
    y = make(seconds, voice.stream(seed, "noise", name), sr=sr)
    if not np.isfinite(y).all():
        raise RuntimeError(f"noise generator {name!r} produced NaN/Inf (a bug)")
    y = y * (0.1 / max(float(np.std(y)), 1e-12))  # about -20 dBFS RMS
    peak = float(np.max(np.abs(y)))
    if peak > 0.95:  # a loud slam must not clip: scale the whole file down instead
        y *= 0.95 / peak
    pcm = np.clip(np.rint(y * 32767.0), -32768, 32767).astype(np.int16)
    sf.write(folder / f"{name}.wav", pcm, sr, subtype="PCM_16")
    return {"file": f"{name}.wav", "sample_rate": sr, "seconds": round(len(pcm) / sr, 3)}
