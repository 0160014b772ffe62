"""The evaluator's config section (composed into :class:`serwild.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    num_workers: int = 2
