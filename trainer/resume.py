"""Where a resumed run continues: :func:`restore` loads last.pt into the model, optimiser,
scheduler and RNGs, and says where the run goes on (:class:`Resumed`): after a finished epoch,
or in the middle of one, in the same world or, with the same global batch, another
(:func:`continuation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from serwild import seeds
from serwild.config import Config
from serwild.errors import UsageError
from serwild.processes import checkpoint as ckpt_io
from serwild.processes.distributed import Dist, log
from serwild.trainer.preflight import DataPlan
from serwild.trainer.sources import train_seed


@dataclass(frozen=True)
class Resumed:
    """Where a run continues: after ``epoch`` completed epochs and ``step`` batches of the next."""

    epoch: int
    step: int
    carried: list[float] | None  # the loss sum, correct and samples of those ``step`` batches
    best: dict[str, Any]
    streams: tuple[int, int] | None = None  # (ranks, batch) that began that epoch, where not this run's


def restore(path: Path, plan: DataPlan, cfg: Config, d: Dist, state: tuple[nn.Module, Any, Any],
             steps: int, batch: int) -> Resumed:
    """Load last.pt into model, optimiser, scheduler and RNGs. A mid-epoch last.pt continues where
    its global batches are this run's (:func:`continuation`). Where the world size changed (a
    node lost, or one more), one line says so and dropout is re-seeded from (seed, position, rank)."""
    model, optimizer, scheduler = state
    ck = ckpt_io.load_checkpoint(path, map_location=d.device)
    ckpt_io.check_compatible(ck, cfg.train.dataset, plan.classes, plan.manifest.fingerprint, str(path),
                             hint=": start a new run (another train.name) instead of resuming")
    if ck.optimizer is None:
        raise UsageError(f"{path} holds weights only (no optimiser state): it cannot be resumed")
    start, step = int(ck.epoch), int(ck.step)
    rng = ck.rng or []
    streams = continuation(path, ck, d, steps, batch) if step else None
    model.load_state_dict(ck.model)
    optimizer.load_state_dict(ck.optimizer)
    scheduler.load_state_dict(ck.scheduler)
    if len(rng) == d.world_size:
        ckpt_io.set_rng_state(rng[d.rank])
    else:
        how = "shrank" if d.world_size < len(rng) else "grew"
        where = (f"epoch {start + 1} goes on from batch {step + 1} of {steps} with the same global batches, "
                 f"regrouped" if step else f"training goes on after epoch {start}")
        log(d, f"note: the world {how} from {len(rng)} to {d.world_size} rank(s) since last.pt was saved: {where}; "
               f"dropout is re-seeded (deterministic, but not an uninterrupted run's)")
        seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.RESUMED, start, step, d.rank))
    best = best_on_disk(path.parent / "best.pt", ck.best) or {"metric": cfg.train.best_metric,
                                                                        "score": None, "epoch": None}
    return Resumed(start, step, ck.partial if step else None, best, streams)


def best_on_disk(best_pt: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The best epoch a resumed run goes on from: last.pt's record, or best.pt's own where a kill
    came after best.pt was written and before last.pt was (best.pt then holds a later epoch that
    last.pt does not know, and the record must name what the file holds)."""
    if not best_pt.is_file():
        return recorded
    on_disk = ckpt_io.load_checkpoint(best_pt).best
    later = (isinstance(on_disk, dict) and on_disk.get("epoch") is not None
             and (recorded is None or recorded.get("epoch") is None or on_disk["epoch"] > recorded["epoch"]))
    return on_disk if later else recorded


def continuation(path: Path, ck: ckpt_io.Checkpoint, d: Dist, steps: int, batch: int) -> tuple[int, int] | None:
    """How this run continues the epoch a mid-epoch ``ck`` stopped in: None, each rank its own
    stream, where the world is the one that saved it; (ranks, batch) of the streams to regroup
    (:func:`serwild.trainer.sources.epoch_batches`) where the world size changed but the global
    batch and the batches per epoch did not. Regrouping, rather than starting the epoch again from the last epoch's end
    (which last.pt no longer holds), keeps the work done and trains every sample of the epoch
    once, in the global batches an uninterrupted run would use. Anything else is refused."""
    ranks, saved_batch, saved_steps = len(ck.rng or []), ck.batch, int(ck.steps or steps)
    if saved_steps == steps and ranks == d.world_size and saved_batch in (None, batch):
        return None
    if saved_steps == steps and saved_batch is not None and ranks * int(saved_batch) == d.world_size * batch:
        return ranks, int(saved_batch)
    # A last.pt of an older serwild does not say its batch: only its own world can continue it.
    saved, hint = ((f"{ranks} rank(s) × {saved_batch} samples", "the same global batch (train.batch_size) and "
                    "samples per epoch") if saved_batch is not None else
                   (f"{ranks} rank(s)", f"--nproc {ranks} and the same batch size"))
    raise UsageError(f"{path} was saved in the middle of epoch {int(ck.epoch) + 1} (batch {ck.step} of "
                     f"{saved_steps}, by {saved}); this run has {steps} batches per epoch of {d.world_size} "
                     f"rank(s) × {batch} samples, so it cannot continue that epoch exactly: resume with {hint}, "
                     f"or start a new run")
