"""The trainer's config sections (composed into :class:`serwild.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainConfig:
    shards: str | None = None  # a build folder; None: the config's `out`
    dataset: str = "ahsn"
    conditions: list[str] = field(default_factory=lambda: ["clean"])
    epochs: int = 6
    batch_size: int = 128  # global: divided across ranks
    lr: float = 4e-4
    pretrained: str = "imagenet"  # imagenet | none | <path to a state_dict file>
    num_workers: int = 2
    run_dir: str = "runs"
    name: str | None = None  # run folder name; None: derived from dataset + conditions


@dataclass(frozen=True)
class CvConfig:
    fold: int | None = None  # hold out train fold k for validation; None: train on all folds
