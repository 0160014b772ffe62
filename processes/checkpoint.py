"""Checkpoints: one typed document (:class:`Checkpoint`), written atomically by rank 0 as a dict
of plain data and tensors, read back with ``weights_only=True`` (no code in a file runs).

``runs/<name>/last.pt`` holds everything resuming needs; ``best.pt`` (the best validated
epoch) holds the weights without the optimiser's state, scheduler and RNGs
(:meth:`Checkpoint.weights_only`). The fields are documented on the class. Rebuild the model
with :func:`serwild.trainer.model.model_from_checkpoint`. Writes go to a temporary file in the
same folder, are fsync'ed and renamed, so a kill never leaves a half-written ``last.pt``
behind (the previous one stays until the new one is complete).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serwild.errors import UsageError
from serwild.processes.atomic import atomic_write
from serwild.text import class_names_problem

REQUIRED = ("model", "epoch", "config", "classes", "dataset", "manifest_fingerprint", "arch")
# The models serwild.trainer.model builds (train.arch's values): here, below the trainer, so
# every reader (evaluate, export, predict) checks a file against one list.
ALEXNETS = ("alexnet", "tiny")  # the paper's layers (conv1…fc8): its recipe, freezing and feature cache
# torchvision image classifiers by name, trained from scratch (the scratch recipe, every layer): the
# paper's own future work ("other deep networks"), spanning the cost range of a CPU user's choice
TORCHVISION_ARCHS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny")
ARCHS = ALEXNETS + TORCHVISION_ARCHS


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file: its one reader is :func:`load_checkpoint`, its one writer
    :func:`save_checkpoint` (the file holds :meth:`to_dict`: plain data and tensors)."""

    model: dict[str, torch.Tensor]  # the model's state_dict (no ``module.`` prefix)
    epoch: int  # completed epochs (resuming starts at this 0-based epoch)
    config: dict[str, Any]  # the resolved config (serwild.config.to_dict; recipe resolved)
    classes: list[str]  # class names, index order (the manifest's for ``dataset``)
    dataset: str
    manifest_fingerprint: str  # the build's manifest["fingerprint"]
    arch: str  # train.arch: "alexnet" (the paper's), "tiny" (its small twin) or one of TORCHVISION_ARCHS
    shards: str | None = None  # the build trained from: a folder, or its URL as given
    recipe: dict[str, Any] | None = None  # the optimiser recipe actually used (recipe.describe)
    metrics: dict[str, Any] | None = None  # this epoch's validation metrics (None without validation)
    best: dict[str, Any] | None = None  # {"metric", "score", "epoch"}: the best validated epoch so far
    world_size: int | None = None  # the ranks that wrote it
    steps: int | None = None  # their batches per epoch
    batch: int | None = None  # a mid-epoch last.pt: the per-rank batch of the world that began the epoch
    serwild_version: str | None = None
    # What only resuming reads (last.pt only):
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None  # stepped once per epoch
    rng: list[dict[str, Any]] | None = None  # one RNG-state dict per rank (python, numpy, torch, cuda)
    step: int = 0  # batches of ``epoch`` already trained: > 0 in a mid-epoch last.pt (train.checkpoint_every)
    partial: dict[str, Any] | None = None  # that epoch's loss sum, correct and samples so far

    def to_dict(self) -> dict[str, Any]:
        """What the file holds: every field that is set (a state_dict's tensors are not copied)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None
                and not (f.name == "step" and v == 0)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checkpoint:
        """From a file's dict; keys this version does not know are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def weights_only(self) -> Checkpoint:
        """Without the state only resuming needs: what best.pt, evaluate and predict use
        (AlexNet's weights are 0.23 GB; SGD's momentum adds as much again, Adam's two moments twice)."""
        return replace(self, optimizer=None, scheduler=None, rng=None, step=0, partial=None)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    with atomic_write(path) as f:
        torch.save(ckpt.to_dict(), f)


def link_checkpoint(src: str | Path, dst: str | Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link, else a copy), atomically.

    best.pt is last.pt of its epoch: linking costs no second write of ~0.5 GB, and the next
    ``save_checkpoint`` of last.pt makes a new file, leaving best.pt's untouched.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """A checkpoint written by the trainer; one clear UsageError if it is missing, not one, or
    holds weights that are not finite (naming the tensor)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = safe_load(path, map_location)
    except Exception as e:  # any failure to read: empty or cut files, zip errors, refused objects
        raise UsageError(f"{path} is not a serwild checkpoint ({unreadable_reason(path, e)})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UsageError(f"{path} is not a serwild checkpoint (needs keys {', '.join(REQUIRED)}; has {have})")
    if ckpt["arch"] not in ARCHS:
        raise UsageError(f"{path}: architecture {ckpt['arch']!r} is not supported ({', '.join(ARCHS)})")
    if (problem := class_names_problem(ckpt["classes"])) is not None:
        raise UsageError(f"{path}: 'classes' {problem}")
    _check_weights(path, ckpt["model"])
    return Checkpoint.from_dict(ckpt)


def safe_load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (no code in a file runs; a file holding other
    objects is refused), its warnings quiet (e.g. "Detected pickle protocol 4": the caller's
    refusal says it all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def peek_checkpoint(path: str | Path) -> Checkpoint | None:
    """A checkpoint's fields without reading its tensors (memory-mapped, unchecked), or None where
    the file is not one: what deciding whether a run is done needs, at no cost."""
    try:
        return Checkpoint.from_dict(safe_load(path, mmap=True))
    except Exception:  # a cut or foreign file: treated as not reusable
        return None


def _check_weights(path: Path, state: Any) -> None:
    """``state`` must be a state_dict of finite tensors: NaN or inf weights (a diverged run, a
    damaged file) would score every input as NaN, which passes silently as a label or a report."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UsageError(f"{path} is not a serwild checkpoint ('model' is not a state_dict of named tensors)")
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise UsageError(f"{path}: weight {name} is not finite ({n} of {t.numel()} values are NaN or inf): "
                             "the run diverged or the file is damaged")


def unreadable_reason(path: Path, e: Exception) -> str:
    """Why ``torch.load`` failed, in a few words, without torch's advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError:
        pass
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not any(w in ln.lower() for w in ("weights_only", "weights only", "documentation",
                                                                  "file an issue", "weightsunpickler error"))]
    if isinstance(e, pickle.UnpicklingError) and "weights" in text.lower():
        return ("it holds objects other than tensors and plain data; refused without running them"
                + (f": {lines[0]}" if lines else ""))
    return f"{type(e).__name__}: {lines[0]}" if lines else f"{type(e).__name__}, the file is cut or of another kind"


class OtherBuildError(UsageError):
    """Same dataset and classes, but trained on another build (another manifest fingerprint)."""


def check_compatible(ckpt: Checkpoint, dataset: str, classes: list[str], fingerprint: str, source: str,
                     hint: str = "") -> None:
    """Refuse a checkpoint trained on other shards or another class set than a build's ``dataset``
    (its ``classes``, its manifest's ``fingerprint``), naming the difference (one check for the
    trainer's resume and the evaluator); ``hint`` says what to do instead."""
    if ckpt.dataset != dataset:
        raise UsageError(f"{source} was trained on dataset {ckpt.dataset!r}, not {dataset!r}")
    if list(ckpt.classes) != classes:
        raise UsageError(f"{source} was trained on classes {list(ckpt.classes)}, but this build's "
                         f"{dataset} classes are {classes}")
    if ckpt.manifest_fingerprint != fingerprint:
        raise OtherBuildError(f"{source} was trained on another build of the shards (manifest fingerprint "
                              f"{str(ckpt.manifest_fingerprint)[:12]}…, this build "
                              f"{fingerprint[:12]}…){hint}")


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and ints (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
