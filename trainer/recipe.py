"""Optimiser recipes: which layers train, with which optimiser, lr and schedule.

``paper`` is the paper's fine-tuning (needs pretrained weights); ``scratch`` is the one that
learns from random weights (from them, the paper's recipe collapses to one class).
See :mod:`serwild.trainer.config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from serwild.config import replace
from serwild.data.epochs import Repeats
from serwild.data.records import ShardRecord
from serwild.trainer.config import LAYERS, TrainConfig
from serwild.trainer.model import NEW_LAYER, freeze_layers, layer_parameters

PAPER_FROZEN = ["conv1", "conv2", "conv3", "conv4"]


def resolve_recipe(train: TrainConfig) -> TrainConfig:
    """``recipe: auto`` → paper (weights given) or scratch (``pretrained: none``); ``freeze`` filled in."""
    recipe = train.recipe
    if recipe == "auto":
        recipe = "scratch" if train.pretrained == "none" or train.arch not in ("alexnet", "tiny") else "paper"
    freeze = train.freeze
    if freeze is None:
        freeze = list(PAPER_FROZEN) if recipe == "paper" else []
    return replace(train, recipe=recipe, freeze=freeze)


def describe(train: TrainConfig) -> dict[str, Any]:
    """The recipe as data (for metrics.jsonl, checkpoints and reports); ``train`` must be resolved."""
    frozen = list(train.freeze or [])
    trained = [n for n in LAYERS if n not in frozen] if train.arch in ("alexnet", "tiny") else ["all"]
    if train.recipe == "paper":
        return {"name": "paper", "optimizer": "sgd", "momentum": train.momentum,
                "weight_decay": train.weight_decay, "lr": train.lr, "new_layer_lr": train.new_layer_lr,
                "scheduler": {"type": "step", "step_epochs": train.lr_step, "gamma": train.lr_gamma},
                "frozen": frozen, "trained": trained, "pretrained": train.pretrained}
    return {"name": "scratch", "optimizer": "adam", "lr": train.scratch_lr, "weight_decay": 0.0,
            "scheduler": {"type": "constant"}, "frozen": frozen, "trained": trained,
            "pretrained": train.pretrained}


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Freeze ``train.freeze`` and build the optimiser over the rest (call before wrapping in DDP)."""
    frozen = list(train.freeze or [])
    freeze_layers(model, frozen)
    if train.recipe == "paper":
        old = [n for n in LAYERS if n not in frozen and n != NEW_LAYER]
        groups = [{"params": list(layer_parameters(model, old)), "lr": train.lr, "name": "pretrained"}]
        if NEW_LAYER not in frozen:
            groups.append({"params": list(layer_parameters(model, [NEW_LAYER])),
                           "lr": train.new_layer_lr, "name": "new_layer"})
        groups = [g for g in groups if g["params"]]
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": params, "lr": train.scratch_lr, "name": "all"}],
                            lr=train.scratch_lr)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: paper → ×γ every ``lr_step`` epochs; scratch → constant."""
    if train.recipe == "paper":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step, gamma=train.lr_gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def state_buffers(optimizer: torch.optim.Optimizer) -> int:
    """Tensors the optimiser keeps per trained weight, the size of each: Adam's two moments, SGD's momentum."""
    if isinstance(optimizer, torch.optim.Adam):
        return 2
    return 1 if optimizer.defaults.get("momentum") else 0


def balance_note(classes: Sequence[str], loss_weight: Sequence[float] | None, repeats: Repeats | None) -> str:
    """What ``train.balance`` does to a run, per class, for its start-up line."""
    if loss_weight is not None:
        return f", balance weights ({', '.join(f'{c} {float(w):.2f}' for c, w in zip(classes, loss_weight))})"
    if repeats is not None:
        per_class = ", ".join(f"{c} {r:.2f}" for c, r in zip(classes, repeats.ratios))
        return f", balance sampler: each sample dealt ({per_class}) times per epoch of {repeats.epoch_size()}"
    return ""


def balanced_weights(records: list[ShardRecord], classes: list[str]) -> list[float]:
    """Each class's loss weight, N / (K · n_k) over the training shards' samples (scikit-learn's
    ``compute_class_weight("balanced")``): a class with half the samples counts twice as much per
    sample. A class with no training sample gets 0 (no loss to weight)."""
    counts = [sum(r.count_of(c) for r in records) for c in classes]
    total, k = sum(counts), len(classes)
    return [total / (k * n) if n else 0.0 for n in counts]
