"""What produced a number: software versions, the training budget, and the smoke-size caveat.

Every evaluation report, the protocol report and an exported model card carry these, so a
table read months later still says which code, which torch and how much training made it.
The git calls never write: ``--no-optional-locks`` keeps them from refreshing the index of a
tree others may be working in. The budget comes from the run's ``metrics.jsonl`` (what actually
ran, whatever the config's batch means); the config only says what was asked.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serwild.processes.checkpoint import Checkpoint
from serwild.trainer.history import learning_note

GIT_TIMEOUT_S = 5.0
SMOKE_NOTE = ("Smoke size: this config declares itself a smoke test (`smoke: true`): a tiny corpus and a few "
              "optimiser steps, to check that the pipeline runs. The numbers mean nothing about the method.")


@functools.lru_cache(maxsize=1)
def git_version(where: str | None = None) -> str:
    """``git describe --always`` of the tree holding serwild's source (``-dirty`` when tracked
    files are modified), or ``unknown`` when it is not a git checkout or git is missing."""
    root = Path(where) if where else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=GIT_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    described = git("describe", "--always")
    if not described:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return described + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    """The software that computed a report (torch imported lazily: callers have it loaded)."""
    import torch

    from serwild import __version__

    return {"serwild": __version__, "torch": str(torch.__version__), "python": platform.python_version(),
            "git": git_version()}


def versions_line(v: Mapping[str, Any] | None) -> str:
    """``serwild 0.1.0 (git 1a2b3c4-dirty), torch 2.14.1, Python 3.11.9``."""
    if not v:
        return "versions not recorded"
    return (f"serwild {v.get('serwild', '?')} (git {v.get('git', 'unknown')}), torch {v.get('torch', '?')}, "
            f"Python {v.get('python', '?')}")


# ----------------------------------------------------------------------------- the training budget


def run_history(checkpoint: str | Path, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The metrics.jsonl lines of the run that wrote ``checkpoint``: next to it, or (for a
    cross-validation summary's copy of the best fold) in the run folder its config names."""
    train = config.get("train") or {}
    candidates = [Path(checkpoint).parent / "metrics.jsonl"]
    if train.get("run_dir") and train.get("name"):
        candidates.append(Path(str(train["run_dir"])) / str(train["name"]) / "metrics.jsonl")
    for path in candidates:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        try:
            return [json.loads(ln) for ln in lines if ln.strip()]
        except ValueError:
            continue
    return []


def training_budget(ckpt: Checkpoint, checkpoint: str | Path | None = None,
                    history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """How much training the model had: epochs, samples per epoch, batches, ranks, steps; a value
    neither the checkpoint's config nor the run's history gives is None."""
    config = ckpt.config or {}
    train = config.get("train") or {}
    if history is None:
        history = run_history(checkpoint, config) if checkpoint is not None else []
    epoch = int(ckpt.epoch or 0)
    done = [r for r in history if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch] or history
    last = done[-1] if done else {}
    ranks = last.get("world_size") or ckpt.world_size
    steps = last.get("steps")
    samples = last.get("samples")
    per_rank = (samples // (steps * ranks) if isinstance(samples, int) and steps and ranks
                and samples % (steps * ranks) == 0 else None)
    return {
        "epochs": train.get("epochs"), "epochs_done": epoch,
        "samples_per_epoch_config": train.get("samples_per_epoch"),
        "samples_per_epoch": samples,
        "batch_size_config": train.get("batch_size"),
        "global_batch": per_rank * ranks if per_rank and ranks else None,
        "per_rank_batch": per_rank, "world_size": ranks, "steps_per_epoch": steps,
        "optimizer_steps": sum(int(r.get("steps") or 0) for r in done) or None,
        # the run as a whole (its last epoch, not best.pt's): was it still learning when it stopped?
        "still_learning": learning_note(history),
    }


def budget_line(b: Mapping[str, Any] | None) -> str:
    """One sentence: ``2 of 2 epochs, 32 samples per epoch (config: clean), global batch 8 =
    1 rank × 8 per rank, 4 steps per epoch, 8 optimiser steps in all.``"""
    if not b:
        return "not recorded"

    def known(v: Any) -> str:
        return "?" if v is None else str(v)

    spe = b.get("samples_per_epoch")
    cfg_spe = b.get("samples_per_epoch_config")
    spe_text = known(spe if spe is not None else cfg_spe)
    if cfg_spe is not None and spe is not None and str(cfg_spe) != str(spe):
        spe_text += f" (config: {cfg_spe})"
    if b.get("global_batch") is not None:
        batch = (f"global batch {b['global_batch']} = {b['world_size']} rank(s) × {b['per_rank_batch']} per rank")
    else:
        batch = f"batch_size {known(b.get('batch_size_config'))} in the config (ranks not recorded)"
    return (f"{known(b.get('epochs_done'))} of {known(b.get('epochs'))} epochs, {spe_text} samples per epoch, "
            f"{batch}, {known(b.get('steps_per_epoch'))} steps per epoch, {known(b.get('optimizer_steps'))} "
            "optimiser steps in all")


def smoke_note(config: Mapping[str, Any] | None) -> str:
    """The smoke-size caveat when the (resolved) config declares ``smoke: true``, else ''."""
    return SMOKE_NOTE if config and config.get("smoke") is True else ""
