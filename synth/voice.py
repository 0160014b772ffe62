"""Speech-like audio for the synthetic corpus: a source-filter voice with emotional prosody.

Not a TTS (there are no words), but what a spectrogram of speech shows and what emotion
changes in it. A glottal pulse train (Rosenberg opening, LF-like exponential return, so
the return time Ta sets the spectral tilt as it does in real voices) follows an F0
contour of phrase declination and pitch accents, with jitter and shimmer. It is filtered
frame by frame, in the STFT domain, by a cascade-formant envelope moving through vowel
targets; voiceless consonants are shaped noise (bursts, frication), breathiness is
aspiration noise through the same vocal tract.

Emotion changes only prosody and voice quality (F0 level and range, rate, pauses,
tilt, breathiness, jitter and shimmer, articulation, stress contrast), blended towards
neutral by a per-utterance intensity, so classes overlap the way acted emotions do. Most
of these cues live in spectral detail (harmonics, weak high bands, consonant noise) that
noise masks, which is what the noise-robustness demo needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import librosa
import numpy as np

SR = 16000
HOP = 128  # control frames (8 ms); also the STFT hop, so frame k is centred on sample k·HOP
N_FFT = 512
FPS = SR / HOP
NOISE_DB = 10.0 ** (-8.0 / 20.0)  # consonant noise re vowel level, for level-1 consonants

# Vowel targets F1..F4 (Hz) for a reference adult male (Peterson & Barney style).
VOWELS = np.array([
    [270, 2290, 3010, 3500], [390, 1990, 2550, 3550], [530, 1840, 2480, 3500],
    [660, 1720, 2410, 3450], [730, 1090, 2440, 3400], [570, 840, 2410, 3300],
    [300, 870, 2240, 3350], [440, 1020, 2240, 3400], [490, 1350, 1690, 3300],
    [500, 1500, 2500, 3500],
], dtype=np.float64)
SCHWA = VOWELS[-1]
# Voiced consonants as formant targets with a voicing amplitude: m, n, l, r, w, y.
SONORANTS = [((250, 1000, 2200, 3300), 0.3), ((250, 1500, 2400, 3300), 0.3),
             ((360, 1050, 2700, 3500), 0.55), ((360, 1150, 1550, 3300), 0.55),
             ((300, 700, 2200, 3300), 0.6), ((280, 2200, 2950, 3500), 0.6)]
# Noise consonants: (centre Hz, bandwidth in octaves, level): s, sh, f, and bursts t, k, p.
FRICATIVES = [(6500.0, 0.35, 0.45), (3200.0, 0.4, 0.45), (5000.0, 1.6, 0.1)]
BURSTS = [(4200.0, 0.8, 0.9), (2000.0, 0.6, 0.8), (1200.0, 1.6, 0.6)]
BANDWIDTHS = np.array([70.0, 95.0, 150.0, 220.0, 320.0, 600.0])


def stream(seed: int, *names: object) -> np.random.Generator:
    """A generator for one named thing (an utterance, a speaker, a noise file): the same seed
    and names give the same numbers whatever else is generated, and in whatever order."""
    digest = hashlib.sha256("\x1f".join(str(n) for n in names).encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


@dataclass(frozen=True)
class Voice:
    """A speaker: anatomy and habits that stay fixed across their utterances."""

    f0_hz: float = 120.0  # mean F0 of neutral speech
    formant_scale: float = 1.0  # vocal-tract length: female voices about 1.15-1.2
    rate_sps: float = 4.5  # syllables per second, neutral
    breath: float = 0.06  # aspiration noise relative to voicing
    tilt_db: float = 0.0  # own spectral tilt, dB/octave above 300 Hz
    ta_ms: float = 0.35  # glottal return time: larger is a softer, steeper-sloped voice
    jitter: float = 0.008  # cycle-to-cycle F0 perturbation (relative)
    shimmer: float = 0.05  # cycle-to-cycle amplitude perturbation (relative)


@dataclass(frozen=True)
class Style:
    """How an emotion speaks, relative to the speaker's neutral voice."""

    f0_st: float = 0.0  # F0 shift, semitones
    range_st: float = 3.5  # pitch-accent size, semitones
    rate: float = 1.0  # × syllable rate
    pause: float = 1.0  # × pause length
    tilt_db: float = 0.0  # dB/octave above 300 Hz (+ flatter, - steeper)
    ta: float = 1.0  # × glottal return time
    oq: float = 0.6  # open quotient
    jitter: float = 1.0  # × speaker jitter
    shimmer: float = 1.0  # × speaker shimmer
    breath: float = 1.0  # × speaker breathiness
    stress_db: float = 5.0  # loudness contrast of accented syllables
    force: float = 1.0  # consonant burst/frication strength
    articulation: float = 1.0  # vowel-space size (<1: undershoot towards schwa)
    f1: float = 1.0  # × F1 (jaw opening)
    smile: float = 1.0  # × F2, F3 (lip spreading)
    level_db: float = 0.0  # loudness of the file (the builder peak-normalises blocks anyway)


NEUTRAL = Style()
# Directions from the literature on vocal emotion (Scherer 2003; Banse & Scherer 1996);
# magnitudes are moderate so that, with speaker and intensity spread, classes overlap.
EMOTIONS: dict[str, Style] = {
    "neu": NEUTRAL,
    "ang": Style(f0_st=3.0, range_st=5.0, rate=1.12, pause=0.8, tilt_db=2.5, ta=0.5, oq=0.45,
                 jitter=1.6, shimmer=1.5, breath=0.6, stress_db=8.0, force=1.4, articulation=1.1,
                 f1=1.08, level_db=6.0),
    "hap": Style(f0_st=2.5, range_st=6.5, rate=1.03, pause=0.95, tilt_db=0.8, ta=0.85, oq=0.58,
                 jitter=0.9, breath=1.1, stress_db=5.5, force=1.1, f1=1.03, smile=1.06, level_db=2.0),
    "exc": Style(f0_st=3.0, range_st=7.0, rate=1.12, pause=0.85, tilt_db=1.6, ta=0.7, oq=0.52,
                 jitter=1.1, shimmer=1.2, breath=0.9, stress_db=7.0, force=1.3, articulation=1.05,
                 f1=1.06, smile=1.03, level_db=4.0),
    "sad": Style(f0_st=-2.0, range_st=1.5, rate=0.8, pause=1.5, tilt_db=-3.5, ta=2.0, oq=0.72,
                 jitter=1.4, shimmer=1.3, breath=2.4, stress_db=2.5, force=0.6, articulation=0.75,
                 f1=0.95, smile=0.98, level_db=-5.0),
    "fru": Style(f0_st=1.0, range_st=3.5, rate=1.05, pause=0.9, tilt_db=1.0, ta=0.7, oq=0.52,
                 jitter=1.3, shimmer=1.3, stress_db=6.5, force=1.3, f1=1.03, level_db=2.0),
    "sur": Style(f0_st=4.5, range_st=8.0, rate=1.0, pause=1.1, tilt_db=1.0, ta=0.8, stress_db=7.0,
                 f1=1.06, level_db=3.0),
    "fea": Style(f0_st=4.0, range_st=4.0, rate=1.2, pause=0.9, tilt_db=0.5, ta=1.2, oq=0.65,
                 jitter=2.0, shimmer=1.8, breath=1.8, stress_db=4.0, articulation=0.9, level_db=0.0),
    "dis": Style(f0_st=-1.5, range_st=3.0, rate=0.85, pause=1.2, tilt_db=0.0, ta=1.1, stress_db=5.0,
                 articulation=0.9, f1=0.97, smile=0.95, level_db=0.0),
}


def blend(a: Style, b: Style, alpha: float) -> Style:
    """``a + alpha·(b - a)``, field by field: alpha 0 is ``a``, 1 is ``b``."""
    return Style(**{f.name: getattr(a, f.name) + alpha * (getattr(b, f.name) - getattr(a, f.name))
                    for f in dataclasses.fields(Style)})


def utterance_style(label: str, rng: np.random.Generator) -> Style:
    """An emotion's style at a random intensity, each parameter perturbed a little.

    Acted emotion ranges from barely marked to full-blown; drawing the intensity per
    utterance is what makes the classes overlap (a mild anger sounds almost neutral).
    Unknown codes (``oth``, ``xxx``) get a random mix of two emotions.
    """
    if label in EMOTIONS:
        target = EMOTIONS[label]
    else:
        names = sorted(EMOTIONS)
        a, b = rng.choice(len(names), size=2, replace=False)
        target = blend(EMOTIONS[names[a]], EMOTIONS[names[b]], float(rng.uniform(0.3, 0.7)))
    style = blend(NEUTRAL, target, float(rng.uniform(0.35, 1.15)))
    spread = {"f0_st": 1.2, "range_st": 0.8, "tilt_db": 1.5, "stress_db": 1.0, "level_db": 2.0}
    changes = {}
    for f in dataclasses.fields(Style):
        v = getattr(style, f.name)
        if f.name in spread:
            changes[f.name] = v + spread[f.name] * float(rng.standard_normal())
        else:  # multiplicative spread on ratios and quotients
            changes[f.name] = v * float(np.exp(0.08 * rng.standard_normal()))
    changes["range_st"] = max(0.3, changes["range_st"])
    changes["oq"] = float(np.clip(changes["oq"], 0.35, 0.85))
    return Style(**changes)


def random_voice(gender: str, rng: np.random.Generator) -> Voice:
    """A plausible adult speaker; ``gender`` is ``"F"`` or ``"M"``."""
    female = gender == "F"
    return Voice(
        f0_hz=float(rng.normal(205.0, 18.0) if female else rng.normal(115.0, 11.0)),
        formant_scale=float(rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.04)),
        rate_sps=float(rng.uniform(3.8, 5.2)),
        breath=float(rng.uniform(0.03, 0.1) * (1.3 if female else 1.0)),
        tilt_db=float(rng.normal(0.0, 1.5)),
        ta_ms=float(rng.uniform(0.25, 0.45) * (1.15 if female else 1.0)),
        jitter=float(rng.uniform(0.005, 0.012)),
        shimmer=float(rng.uniform(0.03, 0.07)),
    )


# ----------------------------------------------------------------------------- planning


@dataclass
class _Tracks:
    """Control tracks, one value per frame."""

    voice: np.ndarray  # voicing amplitude
    asp: np.ndarray  # aspiration noise (plosive release), through the vocal tract
    fric: np.ndarray  # frication / burst amplitude
    fric_fc: np.ndarray
    fric_bw: np.ndarray
    formants: np.ndarray  # (frames, 4) F1..F4, NaN where not set
    f0_st: np.ndarray  # semitones re the speaker's F0


def _plan(n_frames: int, voice: Voice, style: Style, rng: np.random.Generator) -> _Tracks:
    """Phrases of syllables (onset consonant, vowel, optional coda) separated by pauses."""
    tr = _Tracks(np.zeros(n_frames), np.zeros(n_frames), np.zeros(n_frames),
                 np.full(n_frames, 4000.0), np.ones(n_frames), np.full((n_frames, 4), np.nan),
                 np.zeros(n_frames))
    vowels = SCHWA + style.articulation * (VOWELS - SCHWA)
    vowels = vowels * np.array([style.f1, style.smile, style.smile, 1.0])
    syl_frames = FPS / (voice.rate_sps * style.rate)
    stress_gain = 10.0 ** (style.stress_db / 20.0)
    t = int(rng.uniform(0.06, 0.25) * FPS)
    end = n_frames - int(rng.uniform(0.06, 0.2) * FPS)
    while t < end - 4:
        n_syl, t0 = int(rng.integers(2, 9)), t
        for i in range(n_syl):
            stressed = rng.random() < 0.35
            dur = max(8, int(round(syl_frames * rng.lognormal(0.0, 0.25) * (1.3 if stressed else 1.0))))
            if t + dur > end:
                break
            v0 = t + _onset(tr, t, dur, style, rng)
            v1 = t + dur - (_coda(tr, t + dur, style, rng) if rng.random() < 0.3 else 0)
            gain = stress_gain if stressed else float(rng.uniform(0.7, 1.0))
            tr.voice[v0:v1] = gain
            tr.formants[v0:v1] = vowels[rng.integers(len(vowels))]
            height = style.range_st * (rng.uniform(0.6, 1.2) if stressed else rng.uniform(-0.2, 0.3))
            if i == n_syl - 1 or t + dur + syl_frames > end:  # phrase-final fall, or a question's rise
                height = style.range_st * (0.8 if rng.random() < 0.2 else -0.6)
            _bump(tr.f0_st, (v0 + v1) / 2.0, max(v1 - v0, 4), height)
            t += dur
        if t == t0:  # not even one syllable fits before the end
            break
        decl = float(rng.uniform(1.5, 3.5))  # declination across the phrase, semitones
        tr.f0_st[t0:t] += np.linspace(decl / 2, -decl / 2, t - t0)
        t += max(3, int(FPS * rng.uniform(0.12, 0.45) * style.pause))
    return tr


def _onset(tr: _Tracks, t: int, dur: int, style: Style, rng: np.random.Generator) -> int:
    """Write an onset consonant at frame ``t``; returns its length in frames."""
    kind = rng.choice(4, p=[0.3, 0.25, 0.25, 0.2])  # stop, fricative, sonorant, none
    room = dur // 2
    if kind == 0:  # closure, burst, aspiration
        closure, asp = int(rng.integers(3, 6)), int(rng.integers(2, 5))
        fc, bw, lvl = BURSTS[rng.integers(len(BURSTS))]
        n = min(room, closure + 2 + asp)
        tr.fric[t + closure:t + closure + 2] = lvl * style.force
        tr.fric_fc[t + closure:t + closure + 2], tr.fric_bw[t + closure:t + closure + 2] = fc, bw
        tr.asp[t + closure + 2:t + n] = 0.25 * style.force
        return n
    if kind == 1:
        fc, bw, lvl = FRICATIVES[rng.integers(len(FRICATIVES))]
        n = min(room, int(rng.integers(6, 12)))
        tr.fric[t:t + n], tr.fric_fc[t:t + n], tr.fric_bw[t:t + n] = lvl * style.force, fc, bw
        if rng.random() < 0.3:  # voiced fricative (z, v)
            tr.voice[t:t + n], tr.formants[t:t + n] = 0.2, (300, 1400, 2500, 3400)
        return n
    if kind == 2:
        formants, amp = SONORANTS[rng.integers(len(SONORANTS))]
        n = min(room, int(rng.integers(4, 8)))
        tr.voice[t:t + n], tr.formants[t:t + n] = amp, formants
        return n
    return 0


def _coda(tr: _Tracks, t_end: int, style: Style, rng: np.random.Generator) -> int:
    """A syllable-final nasal, /s/ or stop closure ending at ``t_end``; returns its length."""
    n = int(rng.integers(4, 8))
    kind = rng.integers(3)
    if kind == 0:
        tr.voice[t_end - n:t_end], tr.formants[t_end - n:t_end] = SONORANTS[0][1], SONORANTS[0][0]
    elif kind == 1:
        fc, bw, lvl = FRICATIVES[0]
        tr.fric[t_end - n:t_end], tr.fric_fc[t_end - n:t_end] = lvl * style.force, fc
        tr.fric_bw[t_end - n:t_end] = bw
    return n  # kind 2: a silent closure


def _bump(track: np.ndarray, centre: float, width: float, height: float) -> None:
    """Add a raised-cosine bump (a pitch accent) to ``track``."""
    lo, hi = max(0, int(centre - width)), min(len(track), int(centre + width) + 1)
    x = (np.arange(lo, hi) - centre) / width
    track[lo:hi] += height * 0.5 * (1.0 + np.cos(np.pi * np.clip(x, -1.0, 1.0)))


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Moving average over ``n`` frames along axis 0, same length (edges held)."""
    if n <= 1:
        return x
    pad = [(n // 2, n - 1 - n // 2)] + [(0, 0)] * (x.ndim - 1)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=0)
    c = np.concatenate([np.zeros((1,) + x.shape[1:]), c], axis=0)
    return (c[n:] - c[:-n]) / n


def _fill_nan(f: np.ndarray) -> np.ndarray:
    """Formants are undefined in silence; interpolate them from the neighbouring sounds."""
    out = f.copy()
    ok = ~np.isnan(f[:, 0])
    idx = np.arange(len(f))
    for k in range(f.shape[1]):
        out[:, k] = np.interp(idx, idx[ok], f[ok, k]) if ok.any() else SCHWA[k]
    return out


# ----------------------------------------------------------------------------- rendering


def _glottal(f0: np.ndarray, oq: float, ta_s: float, jitter: float, shimmer: float,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Glottal flow derivative, per sample, and the phase within each period.

    Vectorised over samples: the period index and the phase come from the cumulative sum of
    F0, so jitter and shimmer are per-period draws looked up by that index.
    """
    k0 = (np.cumsum(f0) / SR).astype(np.int64)
    jit = 1.0 + jitter * rng.standard_normal(int(k0[-1]) + 2)
    phase = np.cumsum(f0 * jit[k0]) / SR
    k = phase.astype(np.int64)
    x = phase - k
    shim = np.maximum(0.2, 1.0 + shimmer * rng.standard_normal(int(k[-1]) + 1))
    tp, tn = 0.6 * oq, 0.4 * oq  # opening and closing parts of the open phase (speed quotient 1.5)
    ta = np.clip(ta_s * f0, 0.004, 0.12)  # return time as a fraction of the period
    d = np.where(x < tp, (np.pi / (2 * tp)) * np.sin(np.pi * np.minimum(x, tp) / tp), 0.0)
    closing = (x >= tp) & (x < tp + tn)
    d = np.where(closing, -(np.pi / (2 * tn)) * np.sin(0.5 * np.pi * (x - tp) / tn), d)
    ret = x >= tp + tn
    d = np.where(ret, -(np.pi / (2 * tn)) * np.exp(-np.maximum(x - tp - tn, 0.0) / ta), d)
    return d * shim[k], x


def _envelopes(tr: _Tracks, voice: Voice, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """(voiced, noise) spectral envelopes, shape (bins, frames)."""
    f = np.fft.rfftfreq(N_FFT, 1.0 / SR)[:, None]
    formants = _smooth(_fill_nan(tr.formants), 5) * voice.formant_scale
    extra = np.array([4500.0, 5800.0]) * voice.formant_scale
    formants = np.concatenate([formants, np.broadcast_to(extra, (len(formants), 2))], axis=1)
    bw = np.broadcast_to(BANDWIDTHS, formants.shape).copy()
    bw[:, 0] *= 1.0 + 0.4 * (style.breath - 1.0) * (style.breath > 1.0)  # breathy: damped F1
    log_env = np.zeros((len(f), len(formants)))
    for k in range(formants.shape[1]):
        fk, b = formants[:, k][None, :], bw[:, k][None, :] / 2.0
        log_env += np.log(fk**2 + b**2) - 0.5 * np.log(((f - fk) ** 2 + b**2) * ((f + fk) ** 2 + b**2))
    tilt = (voice.tilt_db + style.tilt_db) / 6.0206 * np.log2(np.maximum(f, 300.0) / 300.0)
    highpass = np.log(f**2 / (f**2 + 80.0**2) + 1e-12)
    env_v = np.exp(log_env + tilt * np.log(2.0) + highpass)
    fc, fbw = tr.fric_fc[None, :], tr.fric_bw[None, :]
    env_n = np.exp(-0.5 * (np.log2(np.maximum(f, 50.0) / fc) / fbw) ** 2)
    env_n /= np.sqrt(np.mean(env_n**2, axis=0, keepdims=True))  # unit power: the level is tr.fric's
    return env_v, env_n


def synthesize(n_samples: int, voice: Voice, style: Style, rng: np.random.Generator) -> np.ndarray:
    """``n_samples`` of 16 kHz speech-like audio, float32 in (-1, 1), never all zeros."""

    n_frames = 1 + n_samples // HOP
    tr = _plan(n_frames, voice, style, rng)
    tr.voice = _smooth(tr.voice, 3)  # ~24 ms onsets and offsets, no clicks
    tr.fric, tr.asp = _smooth(tr.fric, 2), _smooth(tr.asp, 2)
    f0_st = _smooth(tr.f0_st, 7) + _smooth(rng.standard_normal(n_frames) * 1.2, 25) + style.f0_st
    f0_frames = np.clip(voice.f0_hz * 2.0 ** (f0_st / 12.0), 55.0, 650.0)
    n, centres = np.arange(n_samples), np.arange(n_frames) * HOP
    f0 = np.interp(n, centres, f0_frames)
    amp = np.interp(n, centres, tr.voice)
    pulses, x = _glottal(f0, style.oq, voice.ta_ms * style.ta * 1e-3,
                         voice.jitter * style.jitter, voice.shimmer * style.shimmer, rng)
    breath = voice.breath * style.breath * (0.4 + 0.6 * (x < style.oq))  # louder while the glottis is open
    voiced = pulses * amp + rng.standard_normal(n_samples) * (breath * amp * 3.0 + np.interp(n, centres, tr.asp))
    noise = rng.standard_normal(n_samples) * np.interp(n, centres, tr.fric)
    env_v, env_n = _envelopes(tr, voice, style)
    y_v = librosa.istft(librosa.stft(voiced, n_fft=N_FFT, hop_length=HOP) * env_v,
                        hop_length=HOP, n_fft=N_FFT, length=n_samples)
    y_n = librosa.istft(librosa.stft(noise, n_fft=N_FFT, hop_length=HOP) * env_n,
                        hop_length=HOP, n_fft=N_FFT, length=n_samples)
    # The vowel path's gain depends on the formants, so it is set to unit RMS; the noise
    # path has unit-power envelopes, so consonants sit at their tr.fric level re the vowels.
    return _level(_unit(y_v, amp > 0.3) + NOISE_DB * y_n, amp, style.level_db, rng)


def _unit(y: np.ndarray, active: np.ndarray) -> np.ndarray:
    """``y`` scaled to unit RMS over its active samples."""
    part = y[active] if active.any() else y
    return y / max(float(np.sqrt(np.mean(part**2))), 1e-12)


def _level(y: np.ndarray, amp: np.ndarray, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """Scale to a speaking level, keep headroom, add a faint room-noise floor (as recordings have)."""
    y = _unit(y, amp > 0.3) * 0.06 * 10.0 ** (level_db / 20.0)
    peak = float(np.max(np.abs(y)))
    if peak > 0.9:
        y *= 0.9 / peak
    floor = np.cumsum(rng.standard_normal(len(y))) * 0.02  # brown-ish, then high-passed below
    floor = floor - _smooth(floor, 201)
    y = y + 2e-4 * floor / max(float(np.std(floor)), 1e-12)
    return y.astype(np.float32)
