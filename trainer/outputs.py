"""The one evaluation loop: a model over batches → its exact outputs, the labels, the sample keys.

Validation (serwild.trainer.train), the evaluator (serwild.evaluate.evaluate) and the feature
cache's pass through the frozen prefix (serwild.trainer.features) all run a model through
:func:`batch_outputs`, so device moves, uint8 normalisation, autocast and no-grad are written
once, and the same model on the same data gives every caller the same numbers. A batch is
``(inputs, labels, keys)``: images from ``make_eval_loader`` (keys: each sample's metadata), or
cached features from ``CachedTrainData.eval_batches`` (keys: sample keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from serwild.data.transforms import normalise
from serwild.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor, list[Any]]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device`` (None: full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Outputs:
    """Everything a model said about some samples, in the order their batches came."""

    logits: np.ndarray  # (N, K) float32: the outputs as computed (upcast from autocast's dtype)
    labels: np.ndarray  # (N,) int64
    keys: list[Any]  # per sample, what its batch named it by

    @property
    def preds(self) -> np.ndarray:
        """The predicted class of each sample (argmax; none for no samples)."""
        return self.logits.argmax(axis=1) if len(self.logits) else np.zeros(0, dtype=np.int64)


def batch_outputs(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                  dtype: torch.dtype | None = None) -> Iterator[Batch]:
    """``(outputs, labels, keys)`` per batch, outputs float32 on the CPU; ``model`` in eval mode.

    ``model`` must be unwrapped (not DDP): DDP's forward may start collectives, and ranks may
    hold different numbers of batches (or none). Batches come one at a time, so a caller that
    keeps only what it needs (the feature cache writes each shard's file) never holds them all.
    """
    model.eval()
    for inputs, labels, keys in batches:
        x = inputs.to(device, non_blocking=True)
        # no_grad per batch, not around the loop: a generator's context would leak into its caller
        with torch.no_grad(), autocast(device, dtype):
            out = model(normalise(x) if x.dtype == torch.uint8 else x).float().cpu()
        yield out, labels.cpu().long(), list(keys)


def model_outputs(model: nn.Module, batches: Iterable[Batch], device: torch.device, dtype: torch.dtype | None = None,
                  on_batch: Callable[[int], Any] | None = None) -> Outputs:
    """Every batch's outputs, labels and keys, concatenated (:func:`batch_outputs`); ``on_batch`` is
    told each batch's size (a progress bar)."""
    logits, labels, keys = [], [], []
    for out, y, k in batch_outputs(model, batches, device, dtype):
        logits.append(out.numpy())
        labels.append(y.numpy())
        keys += k
        if on_batch is not None:
            on_batch(len(k))
    if not logits:
        return Outputs(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), [])
    return Outputs(np.concatenate(logits), np.concatenate(labels), keys)


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: fp32); a choice the device cannot
    run is one line."""
    if choice == "none" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16":
        if device.type != "cuda":
            raise UsageError("train.amp=fp16 needs a GPU (use bf16 or none on a CPU)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if choice == "auto":
            return torch.float16
        raise UsageError("train.amp=bf16: this GPU has no bfloat16 (use fp16)")
    return torch.bfloat16
