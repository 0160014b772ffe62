"""The evaluator's config section (composed into :class:`serwild.config.Config`).

``serwild evaluate`` and ``serwild predict`` read it from ``--config`` and ``eval.*``
overrides; the rest of the config comes from the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serwild.bounds import SEED_MAX, check_range


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128  # per process; 1..65536
    num_workers: int = 2  # loader workers per process; 0..256
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: a GPU when there is one
    # 95 % intervals: cluster bootstrap over utterances (serwild.evaluate.uncertainty);
    # bootstrap = resamples per interval, 0 = no intervals.
    bootstrap: int = 1000  # 0..100000
    bootstrap_seed: int = 0  # 0..2^63-1
    alpha: float = 0.05  # 1 - coverage: 0.05 gives 95 % intervals
    # A corpus's own column (a CSV's extra column, e.g. intensity): the report adds each condition's
    # scores per value of it, per 1 s block. None: no such breakdown.
    group_by: str | None = None

    def __post_init__(self) -> None:
        check_range("eval.batch_size", self.batch_size, 1, 65_536)
        check_range("eval.num_workers", self.num_workers, 0, 256)
        check_range("eval.bootstrap", self.bootstrap, 0, 100_000)  # 0: no intervals
        check_range("eval.bootstrap_seed", self.bootstrap_seed, 0, SEED_MAX)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"eval.alpha must be in (0, 1), got {self.alpha}")
        if self.group_by is not None and not 1 <= len(self.group_by) <= 64:
            raise ValueError("config key 'eval.group_by' is a column name of 1..64 characters")
