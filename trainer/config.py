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

from serwild.bounds import MAX_FOLDS, SEED_MAX, check_range

MAX_LR = 10.0  # every learning rate is in (0, MAX_LR]
MAX_WORKERS = 256  # loader processes per rank

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def check_every(every: int | str | None) -> None:
    """``train.checkpoint_every``: None, steps (1..10^9) or minutes as "Mmin" (0 < M <= 10^5)."""
    if every is None or (isinstance(every, int) and not isinstance(every, bool) and 1 <= every <= 10**9):
        return
    if isinstance(every, str) and every.endswith("min"):
        try:
            minutes = float(every.removesuffix("min"))
        except ValueError:
            minutes = -1.0
        if 0 < minutes <= 1e5:
            return
    raise ValueError(f"config key 'train.checkpoint_every' must be a number of steps (1..10^9) or minutes "
                     f"such as \"10min\", got {every!r}")



def is_folder_name(name: str) -> bool:
    """``name`` names one folder inside another: no separator, not ``.`` or ``..``, printable."""
    return 1 <= len(name) <= 128 and name.isprintable() and not any(c in name for c in "/\\") \
        and name not in (".", "..")

@dataclass(frozen=True)
class TrainConfig:
    shards: str | None = None  # a build folder, or its file://, http(s)://, s3:// URL; None: `out`
    dataset: str = "ahsn"
    conditions: list[str] = field(default_factory=lambda: ["clean"])
    epochs: int = 6  # 1..10000
    # The GLOBAL batch (all ranks together), divided across ranks as evenly as it goes; 1..65536.
    # batch_size_per_rank, when set, is the per-device batch torchrun users know (torchvision's
    # references, HF's per_device_train_batch_size): the global batch is then it × ranks.
    batch_size: int = 128
    batch_size_per_rank: int | None = None  # 1..65536; overrides batch_size
    seed: int | None = None  # data order and dropout; None: the root `seed` (which also draws the split)
    # A resumable last.pt in the middle of an epoch: every N steps (an int), every M minutes
    # ("Mmin"), or None (epoch ends only). --resume continues at the next batch, bit for bit.
    checkpoint_every: int | str | None = None
    keep_last: bool = True  # False: a finished run deletes last.pt (full state), keeping best.pt (weights)
    # Samples drawn per epoch (all ranks together): "all" = every selected training sample
    # once on average; "clean" = as many as the clean shards of the same folds hold, so an
    # experiment-2 run (4× the data) takes the same number of optimiser steps as experiment 1.
    samples_per_epoch: int | Literal["all", "clean"] = "all"  # or 1..10^9
    pretrained: str = "imagenet"  # imagenet | none | <path to a state_dict or checkpoint file>
    # alexnet: the paper's model; tiny: the same layers, names and module paths at small widths
    # (~50 k parameters: tests and smoke runs); imagenet weights exist for alexnet only.
    # or a torchvision classifier by name, trained from scratch: resnet18 | mobilenet_v3_small |
    # efficientnet_b0 | convnext_tiny (the scratch recipe; no freezing, no feature cache)
    arch: Literal["alexnet", "tiny", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"] = "alexnet"
    recipe: Literal["auto", "paper", "scratch"] = "auto"
    lr: float = 4e-4  # paper: trained pretrained layers (conv5, fc6, fc7)
    new_layer_lr: float = 0.01  # paper: the replaced last layer (weight and bias)
    momentum: float = 0.9  # [0, 1)
    weight_decay: float = 4e-4  # [0, 1)
    lr_step: int = 2  # epochs between decays (the paper gives γ but not the step); 1..10000
    lr_gamma: float = 0.2  # (0, 1]
    scratch_lr: float = 1e-4  # recipe scratch: Adam, all layers
    freeze: list[str] | None = None  # layers kept fixed (conv1…fc8); None: the recipe's choice
    # Class imbalance: none (the paper's plain loss), weights (each class's loss weighted by
    # N / (K · n_k) over the training samples: scikit-learn's "balanced", so rare classes count as much)
    # or sampler (each class's samples dealt n_max / n_k times per epoch: balanced batches, exact epochs)
    balance: Literal["none", "weights", "sampler"] = "none"
    # A serwild.metrics.VALIDATION name. "accuracy" is wa's name before serwild.metrics named every
    # metric once: configs (and checkpoints, which carry theirs) of earlier versions still load, as wa.
    best_metric: Literal["weighted_f1", "wa", "ua", "accuracy"] = "weighted_f1"
    # Early stopping: end the run once best_metric has not improved on validation for this many
    # epochs (train.epochs stays the budget's ceiling); None: train every epoch. Needs validation.
    patience: int | None = None  # 1..10000
    num_workers: int = 2  # DataLoader workers per rank; 0..256
    prefetch_factor: int = 2  # batches each worker keeps ready; 1..64
    shuffle_buffer: int = 1000  # samples (PNG bytes, decoded after the shuffle); 1..100000
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
    channels_last: bool = True  # NHWC model and batches: what tensor cores want; on a CPU 1.03-1.3x (bench_cpu)
    timeout_s: int = 600  # every collective (and process-group start) gives up after this; 1..86400
    run_dir: str = "runs"
    name: str | None = None  # run folder name; None: derived from dataset + conditions + fold

    def __post_init__(self) -> None:
        check_range("train.epochs", self.epochs, 1, 10_000)
        if self.patience is not None:
            check_range("train.patience", self.patience, 1, 10_000)
        check_range("train.batch_size", self.batch_size, 1, 65_536)
        if self.batch_size_per_rank is not None:
            check_range("train.batch_size_per_rank", self.batch_size_per_rank, 1, 65_536)
        if self.seed is not None:
            check_range("train.seed", self.seed, 0, SEED_MAX)
        check_every(self.checkpoint_every)
        if self.best_metric == "accuracy":
            object.__setattr__(self, "best_metric", "wa")  # frozen: the one way to normalise in place
        if not self.conditions:
            raise ValueError("train.conditions must name at least one condition (e.g. [clean])")
        if isinstance(self.samples_per_epoch, int):
            check_range("train.samples_per_epoch", self.samples_per_epoch, 1, 1_000_000_000)
        # A rate of 0 trains nothing and says nothing; a negative one is refused by torch mid-run.
        for key, rate in (("train.lr", self.lr), ("train.new_layer_lr", self.new_layer_lr),
                          ("train.scratch_lr", self.scratch_lr)):
            if not 0.0 < rate <= MAX_LR:
                raise ValueError(f"config key '{key}' must be > 0 and <= {MAX_LR:g}, got {rate:g}")
        for key, value in (("train.momentum", self.momentum), ("train.weight_decay", self.weight_decay)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"config key '{key}' must be in [0, 1), got {value:g}")
        check_range("train.lr_step", self.lr_step, 1, 10_000)
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ValueError(f"config key 'train.lr_gamma' must be in (0, 1], got {self.lr_gamma:g}")
        check_range("train.num_workers", self.num_workers, 0, MAX_WORKERS)
        check_range("train.prefetch_factor", self.prefetch_factor, 1, 64)
        check_range("train.shuffle_buffer", self.shuffle_buffer, 1, 100_000)
        check_range("train.timeout_s", self.timeout_s, 1, 86_400)
        if self.arch != "alexnet" and self.pretrained == "imagenet":
            raise ValueError(f"config key 'train.pretrained' is imagenet (AlexNet's weights), but train.arch is "
                             f"{self.arch}: give train.pretrained=none or a {self.arch} weights file")
        if self.arch not in ("alexnet", "tiny") and (self.recipe == "paper" or self.freeze):
            raise ValueError(f"config key 'train.recipe'/'train.freeze': {self.arch} trains from scratch, every layer "
                             "(the paper's recipe and freezing name AlexNet's layers conv1…fc8): use train.recipe="
                             "scratch (or auto) and no train.freeze")
        bad = [x for x in (self.freeze or []) if x not in LAYERS]
        if bad:
            raise ValueError(f"train.freeze: unknown layer(s) {bad}; known: {', '.join(LAYERS)}")
        if self.name is not None and not is_folder_name(str(self.name)):
            # One folder inside train.run_dir: '..', '.', 'a/b' or an absolute path would put the run
            # (checkpoints, lock) somewhere the user did not name.
            raise ValueError(f"config key 'train.name' is {str(self.name)[:80]!r}: a run name is one folder name "
                             "inside train.run_dir (1..128 printable characters, no '/', not '.' or '..')")


@dataclass(frozen=True)
class CvConfig:
    fold: int | None = None  # hold out train fold k (0..99) for validation; None: train on all folds
    val_conditions: list[str] | None = None  # conditions validated on; None: train.conditions

    def __post_init__(self) -> None:
        if self.fold is not None:
            check_range("cv.fold", self.fold, 0, MAX_FOLDS - 1)
