"""The evaluator's config section (composed into :class:`serwild.config.Config`).

``serwild evaluate`` and ``serwild predict`` read it from ``--config`` and ``eval.*``
overrides; the rest of the config comes from the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128  # per process
    num_workers: int = 2  # loader workers per process
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU when there is one
    # 95 % intervals: cluster bootstrap over utterances (serwild.evaluate.uncertainty);
    # bootstrap = resamples per interval, 0 = no intervals.
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    alpha: float = 0.05  # 1 - coverage: 0.05 gives 95 % intervals

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("eval.batch_size must be >= 1 and eval.num_workers >= 0")
        if self.bootstrap < 0:
            raise ValueError(f"eval.bootstrap must be >= 0 (0: no intervals), got {self.bootstrap}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"eval.alpha must be in (0, 1), got {self.alpha}")
