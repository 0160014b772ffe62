"""Reading audio robustly: any rate, any channel count, any PCM width → float32 mono.

Every failure is an :class:`AudioError` whose message is the reason that goes into
``rejects.jsonl``; nothing here prints or exits, so one bad file never stops a build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from serwild.builder.config import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

# Below this peak a block is digital silence (about -80 dBFS): it carries no emotion and
# has no power to set an SNR against, so it is rejected rather than divided by.
SILENCE_PEAK = 1e-4


class AudioError(Exception):
    """An input that cannot be used; ``str(e)`` is the reason, for rejects.jsonl."""


@dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe(path: str | Path) -> AudioInfo:
    """Header only: frames, rate, channels. Raises AudioError for anything unreadable."""
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"not readable audio ({_short(e)})") from None
    if info.frames <= 0:
        raise AudioError("empty audio (0 frames)")
    check_rate(int(info.samplerate))
    return AudioInfo(frames=int(info.frames), sample_rate=int(info.samplerate),
                     channels=int(info.channels))


def check_rate(sr: int) -> None:
    """Refuse a header rate outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]: the work a file asks
    for (blocks to plan, samples to resample) must be bounded by its size."""
    if sr < MIN_SAMPLE_RATE:
        raise AudioError(f"sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz (header corrupt?)")
    if sr > MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {sr} Hz is above {MAX_SAMPLE_RATE} Hz (header corrupt?)")


def read_mono(path: str | Path, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Samples ``[start, stop)`` at the file's own rate, downmixed to mono float32. AudioError for unreadable files
    and for NaN/Inf samples (which would otherwise poison an image or a loss)."""
    try:
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"not readable audio ({_short(e)})") from None
    if data.size == 0:
        raise AudioError("empty audio (0 frames)")
    check_rate(int(sr))
    return _mono(data), int(sr)


def _mono(data: np.ndarray) -> np.ndarray:
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or Inf samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(y: np.ndarray, sr_in: int, sr_out: int, length: int | None = None) -> np.ndarray:
    """Resample with librosa (soxr), optionally fixing the output length exactly."""
    if sr_in != sr_out:
        y = librosa.resample(y, orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq")
    if length is not None:
        y = fix_length(y, length)
    return y.astype(np.float32, copy=False)


def fix_length(y: np.ndarray, length: int) -> np.ndarray:
    if len(y) >= length:
        return y[:length]
    return np.pad(y, (0, length - len(y)))


def read_block(path: str | Path, block: int, native_sr: int, block_seconds: float,
               target_sr: int, segment: tuple[float, float] | None = None) -> np.ndarray:
    """Block ``block`` of a file (or of a segment of it, in seconds) as exactly ``block_seconds * target_sr`` mono
    samples. Only the block's own frames are read (seek), so a shard task's memory does not grow with utterance
    length; a short last block (``keep_tail``) is zero-padded, never filled from past a segment's end."""
    n_native = int(round(block_seconds * native_sr))
    first, last = segment_frames(segment, native_sr)
    start = first + block * n_native
    stop = start + n_native if last is None else min(start + n_native, last)
    y, sr = read_mono(path, start=start, stop=stop)
    return resample(y, sr, target_sr, length=int(round(block_seconds * target_sr)))


def segment_frames(segment: tuple[float, float] | None, sr: int) -> tuple[int, int | None]:
    """A segment's first and end frame at rate ``sr`` ((0, None): the whole file)."""
    if segment is None:
        return 0, None
    return int(round(segment[0] * sr)), int(round(segment[1] * sr))


def block_count(info: AudioInfo, block_seconds: float, keep_tail: bool) -> int:
    n_native = int(round(block_seconds * info.sample_rate))
    full, tail = divmod(info.frames, n_native)
    return full + (1 if keep_tail and tail > 0 else 0)


def block_peaks(path: str | Path, info: AudioInfo, block_seconds: float, n_blocks: int,
                first_frame: int = 0) -> list[float]:
    """Peak |sample| of each block (from ``first_frame`` on, for a segment), for the silence check:
    the file is read once, one block at a time, so memory does not grow with the recording's length."""
    n_native = int(round(block_seconds * info.sample_rate))
    peaks = []
    try:
        with sf.SoundFile(str(path)) as f:
            if first_frame:
                f.seek(first_frame)
            for _ in range(n_blocks):
                data = f.read(n_native, dtype="float32", always_2d=True)
                peaks.append(float(np.abs(_mono(data)).max(initial=0.0)) if data.size else 0.0)
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError(f"not readable audio ({_short(e)})") from None
    return peaks


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
