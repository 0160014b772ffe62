"""One training process (one rank): ``main(cfg)`` = :func:`prepare`, then :func:`fit` runs
every epoch (``train_one_epoch`` → validation → metrics + checkpoints). Started by torchrun:

    torchrun --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [--resume] [k=v …]

or by ``serwild train`` (which runs exactly that). Rank 0 logs, draws the progress bar and
writes checkpoints; every rank runs the same number of batches per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from serwild import __version__, seeds
from serwild.config import Config, to_dict
from serwild.data.epochs import steps_per_epoch
from serwild.data.transforms import normalise
from serwild.errors import UsageError
from serwild.metrics import confusion, renamed, validation_scores
from serwild.processes import atomic, lock
from serwild.processes import checkpoint as ckpt_io
from serwild.processes.distributed import (
    Dist,
    all_gather_object,
    all_reduce_sum,
    barrier,
    kernels,
    log,
    setup,
    teardown,
)
from serwild.progress import progress, stage
from serwild.trainer.budget import Budget
from serwild.trainer.features import FeatureData
from serwild.trainer.history import append_jsonl, learning_note, plot_curves, read_jsonl
from serwild.trainer.model import build_model, fetch_imagenet_weights
from serwild.trainer.outputs import amp_dtype, autocast, model_outputs
from serwild.trainer.preflight import (
    DataPlan,
    agree,
    disk_note,
    plan_data,
    prepare_run_dir,
    resolve,
    spec_yaml,
    verify_shards,
)
from serwild.trainer.recipe import balance_note, balanced_weights, describe, make_optimizer, make_scheduler
from serwild.trainer.resume import Resumed, restore
from serwild.trainer.sources import ShardData, data_source, epoch_batches, per_rank_batch, train_seed

T = TypeVar("T")


def train_one_epoch(run: Run, loader: Any, epoch: int, first: int = 0,
                    carried: list[float] | None = None) -> dict[str, Any]:
    """Batches ``first`` … ``run.steps - 1`` of ``epoch`` (``first`` > 0: resumed mid-epoch,
    ``carried``: the loss sum, correct and samples of the batches before it, all ranks); writes
    a mid-epoch last.pt whenever ``train.checkpoint_every`` says so. Returns local loss sum,
    counts and seconds."""
    model, optimizer, scaler, dtype, d, cfg, steps = (run.model, run.optimizer, run.scaler, run.dtype, run.d,
                                                      run.cfg, run.steps)
    model.train()
    channels_last = cfg.train.channels_last
    carry = carried if carried is not None and d.is_main else [0.0, 0.0, 0.0]  # rank 0 holds what came before
    loss_sum = torch.tensor(carry[0], dtype=torch.float64, device=d.device)
    correct = torch.tensor(int(carry[1]), dtype=torch.int64, device=d.device)
    samples, batches = int(carry[2]), 0
    start = time.perf_counter()
    due = CheckpointClock(cfg.train.checkpoint_every, d)
    bar = progress(steps, f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", command="train",
                   enabled=d.is_main, initial=first, leave=False)  # a bar on a terminal, whole lines in a log
    batches_in = InputTimer(loader)
    for images, labels in batches_in:
        images = images.to(d.device, non_blocking=True)
        labels = labels.to(d.device, non_blocking=True)
        x = normalise(images) if images.dtype == torch.uint8 else images
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(d.device, dtype):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), labels, weight=run.loss_weight)
        check_finite(loss, d, epoch, batches)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        samples += labels.numel()
        batches += 1
        bar.update(1)
        if (said := run.budget.step()) is not None and d.is_main:
            stage("train", said)
        if first + batches < steps and due(first + batches):
            _save_position(run, epoch, first + batches, [loss_sum, correct, samples])
    bar.close()
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return {"loss_sum": loss_sum, "correct": correct, "samples": samples, "batches": batches,
            "seconds": time.perf_counter() - start, "input_wait_s": batches_in.seconds}


class NonFiniteLoss(FloatingPointError):
    """The loss of some rank is NaN or infinite: raised on every rank at the same step."""


def check_finite(loss: torch.Tensor, d: Dist, epoch: int, batch: int) -> None:
    """Stop before a NaN reaches the weights (and, through DDP, the other ranks).

    Every rank learns every rank's loss (one small collective per step, before backward), so
    all of them stop at this step together: none is left waiting in DDP's all-reduce for a
    rank that has gone, and the message (rank 0's) names the ranks and their losses.
    """
    losses = losses_by_rank(loss, d)
    bad = {r: v for r, v in enumerate(losses) if not math.isfinite(v)}
    if bad:
        where = ", ".join(f"rank {r}: {v}" for r, v in bad.items())
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch + 1} batch {batch + 1} ({where}): lower the learning "
                            f"rate (train.lr, train.new_layer_lr, train.scratch_lr) or check the data (shards, "
                            f"feature cache, starting weights)")


def losses_by_rank(loss: torch.Tensor, d: Dist) -> list[float]:
    """Each rank's ``loss``, in rank order, on every rank (a sum of one-hot vectors)."""
    mine = torch.zeros(d.world_size, dtype=torch.float64, device=loss.device)
    mine[d.rank] = loss.detach().double()
    return all_reduce_sum(mine, d).tolist()


class CheckpointClock:
    """When to write a mid-epoch checkpoint: every N steps (``train.checkpoint_every: N``), every
    M minutes (``"Mmin"``: rank 0's clock, shared by one small collective per step so that every
    rank saves at the same step), or never (None: at epoch ends only)."""

    def __init__(self, every: int | str | None, d: Dist) -> None:
        self.d, self.steps, self.seconds = d, None, None
        if isinstance(every, int):
            self.steps = every
        elif isinstance(every, str):
            self.seconds = 60.0 * float(every.removesuffix("min"))
        self.last = time.monotonic()

    def __call__(self, step: int) -> bool:
        if self.steps is not None:
            return step % self.steps == 0
        if self.seconds is None:
            return False
        late = float(self.d.is_main and time.monotonic() - self.last >= self.seconds)
        if all_reduce_sum(torch.tensor([late], dtype=torch.float64), self.d).item() > 0:
            self.last = time.monotonic()
            return True
        return False


def _save_position(run: Run, epoch: int, step: int, sums: list) -> None:
    """last.pt at batch ``step`` of ``epoch``: weights, optimiser, every rank's RNG and the
    epoch's loss sums so far, so that ``--resume`` continues at the next batch exactly. The
    per-rank batch goes with the world size (the number of RNG states): together they say how
    the epoch's batches were dealt, which a resume with another world size must regroup."""
    d = run.d
    totals = all_reduce_sum(torch.tensor([float(sums[0]), float(sums[1]), float(sums[2])], dtype=torch.float64),
                            d).tolist()
    rng = all_gather_object(ckpt_io.rng_state(), d)
    if d.is_main:
        ck = replace(_checkpoint(run, epoch, rng, None), step=step, partial=totals, batch=run.batch)
        ckpt_io.save_checkpoint(run.run_dir / "last.pt", ck)
        log(d, f"checkpoint: epoch {epoch + 1} batch {step}/{run.steps} → {run.run_dir / 'last.pt'}")
    barrier(d)  # every rank past the save: a kill now costs nothing already saved


class InputTimer:
    """Iterates ``items`` and adds up the time spent waiting for the next one: the share of
    an epoch the model stood idle for input (decode, shuffle, transfer), in metrics.jsonl."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items, self.seconds = items, 0.0

    def __iter__(self) -> Iterator[T]:
        it = iter(self.items)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - t0
            yield item


# ----------------------------------------------------------------------------- a run


@dataclass
class Run:
    """Everything one rank trains with; built by :func:`prepare`, advanced by :func:`fit`."""

    cfg: Config
    d: Dist
    plan: DataPlan
    run_dir: Path
    raw_model: nn.Module  # the whole network, unwrapped: optimiser, checkpoints and resume use it
    model: nn.Module  # what a step runs, ``data.net(raw_model)``, wrapped in DDP when distributed
    data: ShardData | FeatureData  # where batches come from: the shards, or the feature cache
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    batch: int  # per rank
    steps: int  # per epoch, every rank
    start: int  # completed epochs
    best: dict[str, Any]
    start_step: int = 0  # batches of epoch ``start`` already trained (a mid-epoch last.pt)
    carried: list[float] | None = None  # their loss sum, correct and samples, all ranks
    streams: tuple[int, int] | None = None  # (ranks, batch) that began epoch ``start``, where not this run's
    budget: Budget = field(default_factory=lambda: Budget(0, 0))  # what this process trains; set in fit()
    loss_weight: torch.Tensor | None = None  # per class (train.balance: weights), on the device


def main(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns the final summary (same on every rank)."""
    d = setup(cfg.train.device, cfg.train.timeout_s)
    resolved = None
    try:
        resolved = resolve(cfg)
        return fit(prepare(resolved, d, resume, overwrite))
    finally:
        teardown(d)
        if resolved is not None:  # rank 0's run-folder lock, from prepare_run_dir
            lock.release(Path(resolved.train.run_dir) / str(resolved.train.name))


def prepare(cfg: Config, d: Dist, resume: bool, overwrite: bool) -> Run:
    """Checks (all ranks agree), the model, optimiser and schedule, restored from last.pt on resume."""
    t = cfg.train
    plan = plan_data(cfg)
    run_dir = Path(t.run_dir) / str(t.name)
    resume_from = agree(d, lambda: prepare_run_dir(run_dir, resume, overwrite), on=d.is_main)[0]
    note = agree(d, lambda: verify_shards(plan, t.verify), on=d.is_main)[0]
    if note:
        log(d, note)
    if t.pretrained == "imagenet":  # one download per node, before any rank needs the file
        agree(d, fetch_imagenet_weights, on=d.local_rank == 0)
    batch = per_rank_batch(t, d)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 256 × 256 inputs: pick the fastest kernels once
        torch.set_float32_matmul_precision("high")  # TF32 where AMP is off
    seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.INIT))  # identical initial weights on every rank
    model = build_model(len(plan.classes), t.pretrained, t.arch)
    if t.channels_last:  # NHWC: faster on tensor cores, and on a CPU (benchmarks/bench_cpu.py)
        model = model.to(memory_format=torch.channels_last)
    model.to(d.device)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t)
    batch_steps = steps_per_epoch(plan.samples_per_epoch, batch, d.world_size)
    resumed = Resumed(0, 0, None, {"metric": t.best_metric, "score": None, "epoch": None})
    if resume_from is not None:
        resumed = restore(resume_from, plan, cfg, d, (model, optimizer, scheduler), batch_steps, batch)
        at = f"at epoch {resumed.epoch + 1} batch {resumed.step}" if resumed.step else f"after epoch {resumed.epoch}"
        log(d, f"resuming {run_dir} {at} (lr {[g['lr'] for g in optimizer.param_groups]})")
    else:
        seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.RANK, d.rank))  # dropout differs per rank
    start, best = resumed.epoch, resumed.best
    if d.is_main:
        _start_history(cfg, plan, run_dir, start)
        if (low := disk_note(run_dir, model, optimizer)) is not None:
            log(d, low)
    dtype = amp_dtype(t.amp, d.device)
    data = data_source(cfg, d, plan, model, batch, batch_steps)
    net = data.net(model)
    wrapped = (DistributedDataParallel(net, device_ids=[d.device] if d.device.type == "cuda" else None)
               if d.distributed else net)
    return Run(cfg=cfg, d=d, plan=plan, run_dir=run_dir, raw_model=model, model=wrapped, data=data,
               optimizer=optimizer, scheduler=scheduler,
               scaler=torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16),
               dtype=dtype, batch=batch, steps=batch_steps, start=start, best=best, start_step=resumed.step,
               carried=resumed.carried, streams=resumed.streams,
               loss_weight=(torch.tensor(balanced_weights(plan.train_records, plan.classes), device=d.device)
                            if t.balance == "weights" else None))


def _start_history(cfg: Config, plan: DataPlan, run_dir: Path, start: int) -> None:
    """config.yaml, and metrics.jsonl without lines of epochs last.pt does not hold (a kill
    between the two writes); kept lines of an earlier serwild get today's metric names."""
    kept = [{**r, "val": renamed(r["val"]) if r.get("val") else r.get("val")}
            for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] <= start]
    atomic.write_jsonl(run_dir / "metrics.jsonl", kept)
    atomic.write_text(run_dir / "config.yaml", spec_yaml(cfg, plan))


def fit(run: Run) -> dict[str, Any]:
    """Every remaining epoch: train, validate, log, checkpoint."""
    t, d = run.cfg.train, run.d
    on = kernels(d.device)
    log(d, f"{run.run_dir}: {t.dataset} {list(t.conditions)} fold {run.cfg.cv.fold}, {run.plan.train.samples} "
           f"training samples in {len(run.plan.train.urls)} shards, {run.steps} steps/epoch × {d.world_size} "
           f"rank(s) × batch {run.batch}, recipe {describe(t)['name']} (pretrained {t.pretrained}), "
           f"device {d.device} ({on}), amp {run.dtype}"
           + balance_note(run.plan.classes, run.loss_weight, run.plan.repeats))
    if t.patience is not None and run.plan.val is None:
        log(d, "note: train.patience has nothing to watch (no validation part or cv.fold): every epoch runs")
    run.budget = Budget(steps_left=(t.epochs - run.start) * run.steps - run.start_step,
                        images_per_step=run.batch * d.world_size)
    val = None
    for epoch in range(run.start, t.epochs):
        if (why := _patience_spent(run, epoch)) is not None:
            log(d, f"early stop before epoch {epoch + 1}/{t.epochs}: {why}")
            break
        lrs = [g["lr"] for g in run.optimizer.param_groups]
        first, carried = (run.start_step, run.carried) if epoch == run.start else (0, None)
        stats = train_one_epoch(run, epoch_batches(run.data, run.d, run.batch, epoch, first, run.streams), epoch,
                                first, carried)
        run.scheduler.step()
        val = _validate(run)
        record = {"epoch": epoch + 1, "steps": run.steps, **_train_summary(stats, d), "val": val, "lr": lrs,
                  "recipe": describe(t)["name"], "world_size": d.world_size, "kernels": on}
        _end_epoch(run, epoch, record, val)
        # No rank starts the next epoch before last.pt is complete: a rank killed there can
        # then only cost the epoch in progress.
        barrier(d)
    return _finish(run, val)


def _patience_spent(run: Run, epoch: int) -> str | None:
    """Why no epoch after ``epoch`` (0-based, the epochs done) should run under ``train.patience``,
    or None. Read from the best epoch the run (or its last.pt) holds, so a resumed run that had
    already stopped stops again at once, and one resumed with more patience goes on."""
    t = run.cfg.train
    best = run.best.get("epoch")
    if t.patience is None or run.plan.val is None or not best or epoch - best < t.patience:
        return None
    return (f"validation {t.best_metric} has not improved for {epoch - best} epoch(s) (train.patience "
            f"{t.patience}; best {run.best['score']:.4f} at epoch {best})")


def _validate(run: Run) -> dict[str, Any] | None:
    """The validation fold's scores (None without one): each rank runs its share through the
    evaluation loop, and the ranks' confusion matrices are summed, so every sample counts once
    and every rank gets the same scores. The loop runs the unwrapped ``data.net(raw_model)``, not
    DDP: its forward may start collectives, and ranks may hold different numbers of batches."""
    if run.plan.val is None:
        return None
    k = len(run.plan.classes)
    out = model_outputs(run.data.net(run.raw_model), run.data.val_batches(), run.d.device, run.dtype)
    cm = all_reduce_sum(torch.from_numpy(confusion(out.labels, out.preds, k)), run.d)
    # The unweighted cross-entropy summed over this rank's samples, then over the ranks: the
    # validation loss, whose trend says whether a model was still learning when it stopped.
    nll = (F.cross_entropy(torch.from_numpy(out.logits).double(), torch.from_numpy(out.labels), reduction="sum")
           if len(out.labels) else torch.zeros((), dtype=torch.float64))
    total = all_reduce_sum(nll.reshape(1), run.d)
    scores = validation_scores(cm.numpy(), run.plan.classes)
    return {**scores, "loss": float(total.item()) / scores["n"]}


def _end_epoch(run: Run, epoch: int, record: dict[str, Any], val: dict[str, Any] | None) -> None:
    """Track the best epoch; rank 0 appends metrics.jsonl and writes last.pt (and best.pt)."""
    t, d = run.cfg.train, run.d
    rng = all_gather_object(ckpt_io.rng_state(), d)
    improved = val is not None and (run.best["score"] is None or val[t.best_metric] > run.best["score"])
    if improved:
        assert val is not None
        run.best = {"metric": t.best_metric, "score": val[t.best_metric], "epoch": epoch + 1}
    if not d.is_main:
        return
    append_jsonl(run.run_dir / "metrics.jsonl", record)
    full = _checkpoint(run, epoch + 1, rng, val)
    if improved or run.plan.val is None:  # no validation fold: best.pt is the latest model
        # Weights only: the optimiser's state (one or two copies of the weights) is what resuming
        # needs, and resuming reads last.pt alone. best.pt first: a kill between the two writes
        # then leaves a best.pt newer than last.pt's record, which resuming adopts (resume.best_on_disk),
        # never a last.pt naming a best.pt that was not written.
        ckpt_io.save_checkpoint(run.run_dir / "best.pt", full.weights_only())
    ckpt_io.save_checkpoint(run.run_dir / "last.pt", full)
    v = f"  val WA {val['wa']:.3f} UA {val['ua']:.3f} wF1 {val['weighted_f1']:.3f}" if val else ""
    lr = ", ".join(f"{x:.2g}" for x in record["lr"])
    stage("train", f"epoch {epoch + 1}/{t.epochs}  loss {record['train_loss']:.4f}{v}  lr {lr}  "
                   f"{record['images_per_s']:.0f} img/s ({record['input_wait_fraction']:.0%} waiting for input)  "
                   f"{record['seconds']:.1f} s; {run.budget.eta(epoch + 1 - run.start, t.epochs - epoch - 1)}")
    if (note := divergence_note(record["train_loss"], len(run.plan.classes), lr)) is not None:
        log(d, note)


DIVERGED = 10.0  # a training loss this many times a uniform guess's (ln K) is no longer learning


def divergence_note(loss: float, k: int, lr: str) -> str | None:
    """A warning when an epoch's loss is far above a uniform guess's, ln K, where every model
    starts: the loss is still finite (the non-finite check passes), but the weights are running
    away, as a learning rate at the top of its range does; the run would otherwise end with
    exit 0 and a model that predicts nothing."""
    if loss <= DIVERGED * math.log(k):
        return None
    return (f"warning: the training loss ({loss:.3g}) is over {DIVERGED:g}x a uniform guess's (ln {k} = "
            f"{math.log(k):.2f}): the run is diverging; lower the learning rate (now {lr}: train.lr, "
            "train.new_layer_lr, train.scratch_lr)")


def _checkpoint(run: Run, epoch: int, rng: list, metrics: dict | None) -> ckpt_io.Checkpoint:
    cfg, plan = run.cfg, run.plan
    return ckpt_io.Checkpoint(
        model=run.raw_model.state_dict(), optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        epoch=epoch, rng=rng, config=to_dict(cfg), classes=plan.classes, dataset=cfg.train.dataset,
        manifest_fingerprint=plan.manifest.fingerprint, shards=plan.location, recipe=describe(cfg.train),
        metrics=metrics, best=run.best, arch=cfg.train.arch, serwild_version=__version__,
        world_size=run.d.world_size, steps=run.steps)


def _train_summary(stats: dict[str, Any], d: Dist) -> dict[str, Any]:
    """Loss, accuracy and speed over all ranks (collectives: every rank calls this)."""
    totals = all_reduce_sum(torch.tensor([stats["loss_sum"].item(), float(stats["correct"].item()),
                                          float(stats["samples"])], dtype=torch.float64), d).tolist()
    seconds = max(all_gather_object(stats["seconds"], d))  # the slowest rank sets the pace
    waits = all_gather_object(stats["input_wait_s"] / max(stats["seconds"], 1e-9), d)
    n = max(1.0, totals[2])
    summary = {"train_loss": totals[0] / n, "train_accuracy": totals[1] / n, "images_per_s": totals[2] / seconds,
               "seconds": seconds, "input_wait_fraction": max(waits),
               "batches_per_rank": all_gather_object(stats["batches"], d), "samples": int(totals[2])}
    if d.device.type == "cuda":
        summary["gpu_memory_peak_gb"] = max(all_gather_object(torch.cuda.max_memory_allocated(d.device) / 2**30, d))
    return summary


def _finish(run: Run, val: dict | None) -> dict[str, Any]:
    records = read_jsonl(run.run_dir / "metrics.jsonl") if run.d.is_main else []
    if run.d.is_main and not run.cfg.train.keep_last:  # a finished run keeps its weights-only best.pt
        (run.run_dir / "last.pt").unlink(missing_ok=True)
    if run.d.is_main and records and not (run.run_dir / "best.pt").is_file():
        raise UsageError(f"{run.run_dir}/best.pt is missing at the end of the run (removed while it ran?): "
                         "train again with --overwrite")
    if run.d.is_main and records:
        plot_curves(records, run.run_dir / "curves.png", f"{run.run_dir.name} ({records[-1]['recipe']} recipe)")
        best = run.best
        how = (f"best {best['metric']} {best['score']:.4f} at epoch {best['epoch']}" if best["epoch"]
               else "no validation part: the last epoch's model")
        log(run.d, f"done: {run.run_dir}/best.pt ({how})")
        if (note := learning_note(records)) is not None:
            log(run.d, f"warning: under-trained: {note}")
    return {"run_dir": str(run.run_dir), "best": run.best, "last_val": val}
