"""Live scoring: audio chunks in, one result per 1 s block out, as soon as the block is complete.

A block is cut, resampled, checked for silence and rendered exactly as ``predict_array`` does it for
the same samples, so with ``hop_s`` equal to the block (the default) the labels are those ``serwild
predict`` gives the same recording. ``running_label``: the class of the mean probabilities of the last
``smooth`` scored blocks, a label that does not flicker. ``latency_ms``: from the arrival of the chunk
that completed the block to its result. Usage: docs/models.md.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from serwild.builder import audio
from serwild.data.transforms import image_transform

if TYPE_CHECKING:
    from serwild.deploy.predict import Predictor


@dataclass
class BlockResult:
    """One block of a live stream."""

    block: int  # 0, 1, 2… in the order blocks complete
    start_s: float  # where the block starts in the stream
    silent: bool
    label: str | None  # None for a silent block
    probs: dict[str, float] | None
    running_label: str | None  # the last ``smooth`` scored blocks together (None before the first)
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream(model: Predictor, chunks: Iterable[Any], sample_rate: int, hop_s: float | None = None,
           smooth: int = 3) -> Iterator[BlockResult]:
    """Score ``chunks`` of a live recording at ``sample_rate`` block by block (see the module)."""
    audio.check_rate(int(sample_rate))
    a = model.renderer.cfg
    hop_s = a.block_seconds if hop_s is None else float(hop_s)
    if not 0.0 < hop_s <= a.block_seconds:
        raise ValueError(f"hop_s must be in (0, {a.block_seconds:g}] seconds, got {hop_s:g}")
    if smooth < 1:
        raise ValueError(f"smooth must be at least 1, got {smooth}")
    sr = int(sample_rate)
    n_block, n_hop = int(round(a.block_seconds * sr)), max(1, int(round(hop_s * sr)))
    n_target = int(round(a.block_seconds * a.sample_rate))
    buf = np.zeros(0, dtype=np.float32)
    consumed = 0  # samples of the stream before buf[0]
    recent: deque[np.ndarray] = deque(maxlen=smooth)
    index = 0
    for chunk in chunks:
        arrived = time.perf_counter()
        mono, _ = _mono(chunk)
        if not np.isfinite(mono).all():
            raise ValueError("audio contains NaN or Inf samples")
        buf = np.concatenate([buf, mono])
        while len(buf) >= n_block:
            samples = buf[:n_block]
            start_s = consumed / sr
            if float(np.abs(samples).max(initial=0.0)) < audio.SILENCE_PEAK:
                yield BlockResult(index, round(start_s, 6), True, None, None, _running(model, recent),
                                  (time.perf_counter() - arrived) * 1e3)
            else:
                y = audio.resample(samples, sr, a.sample_rate, length=n_target)
                x = image_transform(model.renderer.rgb(y)).unsqueeze(0)
                p = torch.softmax(model.logits([x])[0], dim=0).double().numpy()
                recent.append(p)
                yield BlockResult(index, round(start_s, 6), False, model.classes[int(np.argmax(p))],
                                  {c: round(float(v), 4) for c, v in zip(model.classes, p)},
                                  _running(model, recent), (time.perf_counter() - arrived) * 1e3)
            index += 1
            buf, consumed = buf[n_hop:], consumed + n_hop


def _running(model: Predictor, recent: deque[np.ndarray]) -> str | None:
    return model.classes[int(np.argmax(np.mean(recent, axis=0)))] if recent else None


def _mono(chunk: Any) -> tuple[np.ndarray, int]:
    from serwild.deploy.predict import to_mono  # the one conversion predict_array uses

    if np.size(chunk) == 0:  # a read that returned nothing yet
        return np.zeros(0, dtype=np.float32), 1
    return to_mono(chunk)
