"""Noise mix-up at a target SNR (the paper's eq. 1) and peak normalisation."""

from __future__ import annotations

import numpy as np


def power(y: np.ndarray) -> float:
    return float(np.mean(np.square(y, dtype=np.float64)))


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, float]:
    """``(y, λ)``: ``y = clean + λ·noise`` with λ set so 10·log10(P_clean / P(λ·noise)) = snr_db. A silent clean
    block gets λ = 0 (there is no speech power to set a ratio against, and dividing would make NaN); silent noise
    raises ValueError."""
    if clean.shape != noise.shape:
        raise ValueError(f"clean {clean.shape} and noise {noise.shape} differ in shape")
    p_clean, p_noise = power(clean), power(noise)
    if p_clean == 0.0:
        return clean.astype(np.float32, copy=True), 0.0
    if p_noise == 0.0:
        raise ValueError("noise segment is silent: no λ reaches the target SNR")
    lam = float(np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0))))
    return (clean + lam * noise).astype(np.float32), lam


def snr_db(clean: np.ndarray, noise_part: np.ndarray) -> float:
    """The SNR of a mix, from its clean part and its (already scaled) noise part."""
    return 10.0 * float(np.log10(power(clean) / power(noise_part)))


def peak_normalise(y: np.ndarray) -> np.ndarray:
    """``y / max|y|`` (infinity norm), after mixing; all-zero input stays all zero."""
    peak = float(np.max(np.abs(y), initial=0.0))
    return y if peak == 0.0 else (y / peak).astype(np.float32)
