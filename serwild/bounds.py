"""Ranges of config values, checked wherever a config is made (a config file, an override, the
copy inside a checkpoint or a manifest): one value must not be able to ask for unbounded memory
or work (`audio.n_fft: 100000000` is a 96 GiB STFT). Each section writes its ranges next to its
settings. A leaf module: every room's config section imports it, and it imports nothing of ours.
"""

from __future__ import annotations

SEED_MAX = 2**63 - 1  # seeds are 64-bit (torch.manual_seed, numpy); non-negative, as numpy requires
MAX_FOLDS = 100  # split.folds, and so cv.fold


def check_range(key: str, value: float, lo: float, hi: float) -> None:
    """Raise ValueError naming ``key`` and its range unless ``lo <= value <= hi``."""
    if not lo <= value <= hi:
        raise ValueError(f"config key '{key}' must be in {_num(lo)}..{_num(hi)}, got {_num(value)}")


def _num(x: float) -> str:
    """An int as it is, a float short (30.0 → 30); a huge int by its size, so the message stays
    one short line (and str() of an int past 4300 digits would raise)."""
    if isinstance(x, int) and x.bit_length() > 80:
        return f"a {x.bit_length()}-bit number"
    return str(x) if isinstance(x, int) else f"{x:g}"
