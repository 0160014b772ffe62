"""The trainer's config sections (composed into :class:`serwild.config.Config`).

Recipes (``train.recipe``), because the paper's recipe needs ImageNet weights:

- ``paper``: conv1–conv4 frozen, conv5 + dense layers trained; SGD (momentum 0.9, weight
  decay 4e-4), lr 4e-4 for the trained pretrained layers and 0.01 for the new last layer,
  step decay γ 0.2 every ``lr_step`` epochs.
- ``scratch``: every layer trained, Adam at ``scratch_lr`` (1e-4), constant lr. From random
  weights the paper's recipe collapses to one class; this one learns.
- ``auto``: ``paper`` when ``pretrained`` gives weights (imagenet or a file), else ``scratch``.

The trainer resolves ``auto`` (and ``freeze``) before it writes the run's config.yaml, so
config.yaml, every line of metrics.jsonl and each checkpoint name the recipe actually used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


@dataclass(frozen=True)
class TrainConfig:
    shards: str | None = None  # a build folder, file://, http(s):// base URL or pipe: command; None: `out`
    dataset: str = "ahsn"
    conditions: list[str] = field(default_factory=lambda: ["clean"])
    epochs: int = 6
    batch_size: int = 128  # global: divided across ranks
    # Samples drawn per epoch (all ranks together): "all" = every selected training sample
    # once on average; "clean" = as many as the clean shards of the same folds hold, so an
    # experiment-2 run (4× the data) takes the same number of optimiser steps as experiment 1.
    samples_per_epoch: int | Literal["all", "clean"] = "all"
    pretrained: str = "imagenet"  # imagenet | none | <path to a state_dict or checkpoint file>
    recipe: Literal["auto", "paper", "scratch"] = "auto"
    lr: float = 4e-4  # paper: trained pretrained layers (conv5, fc6, fc7)
    new_layer_lr: float = 0.01  # paper: the replaced last layer (weight and bias)
    momentum: float = 0.9
    weight_decay: float = 4e-4
    lr_step: int = 2  # epochs between decays (the paper gives γ but not the step)
    lr_gamma: float = 0.2
    scratch_lr: float = 1e-4  # recipe scratch: Adam, all layers
    freeze: list[str] | None = None  # layers kept fixed (conv1…fc8); None: the recipe's choice
    best_metric: Literal["weighted_f1", "accuracy", "ua"] = "weighted_f1"
    num_workers: int = 2  # DataLoader workers per rank
    prefetch_factor: int = 2  # batches each worker keeps ready
    shuffle_buffer: int = 1000  # samples (PNG bytes, decoded after the shuffle)
    # Shards vs manifest before training (rank 0). A URL build is not downloaded twice: full and size
    # both ask sizes (HEAD), and sample counts are checked while streaming (preflight.verify_shards).
    verify: Literal["full", "size", "none"] = "full"
    # The frozen prefix of AlexNet (the paper's conv1–conv4) computed once per image and cached
    # (fp16) next to the build, reused by every epoch, fold and experiment of the build: exact,
    # since those layers never change and no augmentation touches the images. auto: on where
    # exact (a frozen prefix from conv1, a local build), off otherwise; on: required (error if
    # not exact); off: never.
    feature_cache: Literal["auto", "on", "off"] = "auto"
    feature_cache_dir: str | None = None  # None: <build>/feature-cache
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto: bf16 on a GPU that has it, else none
    channels_last: bool = True  # on CUDA only (the layout tensor cores want)
    timeout_s: int = 600  # every collective (and process-group start) gives up after this
    run_dir: str = "runs"
    name: str | None = None  # run folder name; None: derived from dataset + conditions + fold

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not self.conditions:
            raise ValueError("train.conditions must name at least one condition (e.g. [clean])")
        if isinstance(self.samples_per_epoch, int) and self.samples_per_epoch < 1:
            raise ValueError(f"train.samples_per_epoch must be >= 1, got {self.samples_per_epoch}")
        if self.lr_step < 1 or not 0.0 < self.lr_gamma <= 1.0:
            raise ValueError("train.lr_step must be >= 1 and train.lr_gamma in (0, 1]")
        if self.num_workers < 0 or self.prefetch_factor < 1 or self.shuffle_buffer < 1:
            raise ValueError("train.num_workers >= 0, train.prefetch_factor >= 1, train.shuffle_buffer >= 1")
        if self.timeout_s < 1:
            raise ValueError(f"train.timeout_s must be >= 1, got {self.timeout_s}")
        bad = [x for x in (self.freeze or []) if x not in LAYERS]
        if bad:
            raise ValueError(f"train.freeze: unknown layer(s) {bad}; known: {', '.join(LAYERS)}")


@dataclass(frozen=True)
class CvConfig:
    fold: int | None = None  # hold out train fold k for validation; None: train on all folds
    val_conditions: list[str] | None = None  # conditions validated on; None: train.conditions
