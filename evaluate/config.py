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

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError("eval.batch_size must be >= 1 and eval.num_workers >= 0")
