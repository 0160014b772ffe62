"""Block → "jet" spectrogram image, the paper's 257 × 259 RGB picture.

Power STFT (n_fft 512, hop 62, centred) in dB relative to the block's own maximum,
clipped at ``top_db`` below it, quantised to 256 levels and stored as a *palette* PNG whose
palette is matplotlib's ``jet``: decoding it (PIL ``convert("RGB")``, which is what
webdataset's ``rgb8`` does) gives exactly the RGB image matplotlib would colour, at about
half the bytes and a quarter of the encode time of an RGB PNG. Low frequencies are at the
bottom, as in the paper's figures.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


def power_db(y: np.ndarray, n_fft: int = 512, hop_length: int = 62, top_db: float = 80.0) -> np.ndarray:
    """|STFT|² in dB re the maximum, in [-top_db, 0]; shape (1 + n_fft // 2, frames)."""
    import librosa

    spec = np.abs(librosa.stft(y.astype(np.float32), n_fft=n_fft, hop_length=hop_length,
                               center=True)) ** 2
    ref = float(spec.max())
    if ref <= 0.0:  # an all-zero block: a uniformly dark image, never a NaN
        return np.full(spec.shape, -top_db, dtype=np.float32)
    db = 10.0 * np.log10(np.maximum(spec, ref * 1e-12) / ref)
    return np.maximum(db, -top_db).astype(np.float32)


def to_indices(db: np.ndarray, top_db: float = 80.0) -> np.ndarray:
    """dB in [-top_db, 0] → uint8 colour index, rows flipped so low frequencies are at the bottom."""
    idx = np.rint((db + top_db) * (255.0 / top_db))
    return np.ascontiguousarray(np.clip(idx, 0, 255).astype(np.uint8)[::-1])


@functools.lru_cache(maxsize=8)
def palette(name: str = "jet") -> np.ndarray:
    """The colormap as a (256, 3) uint8 table."""
    import matplotlib

    cmap = matplotlib.colormaps[name].resampled(256)
    return np.rint(cmap(np.arange(256))[:, :3] * 255.0).astype(np.uint8)


def encode_png(indices: np.ndarray, colormap: str = "jet") -> bytes:
    img = Image.fromarray(indices, mode="P")
    img.putpalette(palette(colormap).reshape(-1).tolist())
    buf = io.BytesIO()
    # zlib level 1: ~0.3 ms faster per image than the default 6, for files ~0.4 % larger.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_rgb(indices: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """The RGB image (H, W, 3) uint8 for colour indices: what a PNG decoder returns."""
    return palette(colormap)[indices]


def render_png(y: np.ndarray, n_fft: int = 512, hop_length: int = 62, top_db: float = 80.0,
               colormap: str = "jet") -> bytes:
    """One block of samples → palette-PNG bytes of its jet spectrogram."""
    return encode_png(to_indices(power_db(y, n_fft, hop_length, top_db), top_db), colormap)
