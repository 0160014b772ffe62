"""One training process (one rank): ``main(cfg)`` = :func:`prepare`, then :func:`fit` runs
every epoch (``train_one_epoch`` → validation → metrics + checkpoints). Started by torchrun:

    torchrun --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [--resume] [k=v …]

or by ``serwild train`` (which runs exactly that). Rank 0 logs, draws the progress bar and
writes checkpoints; every rank runs the same number of batches per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from serwild import __version__, atomic, lock, seeds
from serwild import checkpoint as ckpt_io
from serwild.config import Config, to_dict
from serwild.data.loaders import make_eval_loader, make_train_loader, steps_per_epoch
from serwild.data.transforms import normalise
from serwild.errors import UsageError
from serwild.metrics import confusion, renamed, validation_scores
from serwild.progress import progress, stage
from serwild.trainer.budget import Budget
from serwild.trainer.distributed import Dist, all_gather_object, all_reduce_sum, barrier, kernels, setup, teardown
from serwild.trainer.features import (
    FeatureData,
    build_feature_cache,
    cache_records,
    cache_spec,
    default_cache_root,
    load_feature_cache,
    resolve_feature_cache,
)
from serwild.trainer.history import append_jsonl, learning_note, plot_curves, read_jsonl
from serwild.trainer.model import build_model, fetch_imagenet_weights
from serwild.trainer.outputs import autocast, model_outputs
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
from serwild.trainer.recipe import describe, make_optimizer, make_scheduler

T = TypeVar("T")


def log(d: Dist, msg: str) -> None:
    if d.is_main:
        print(msg, file=sys.stderr, flush=True)


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
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


def train_one_epoch(run: Run, loader: Any, epoch: int, first: int = 0,
                    carried: list[float] | None = None) -> dict[str, Any]:
    """Batches ``first`` … ``run.steps - 1`` of ``epoch`` (``first`` > 0: resumed mid-epoch,
    ``carried``: the loss sum, correct and samples of the batches before it, all ranks); writes
    a mid-epoch last.pt whenever ``train.checkpoint_every`` says so. Returns local loss sum,
    counts and seconds."""
    model, optimizer, scaler, dtype, d, cfg, steps = (run.model, run.optimizer, run.scaler, run.dtype, run.d,
                                                      run.cfg, run.steps)
    model.train()
    channels_last = cfg.train.channels_last and d.device.type == "cuda"
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
        ck = {**_checkpoint(run, epoch, rng, None), "step": step, "partial": totals, "batch": run.batch}
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
    if t.channels_last and d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.to(d.device)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t)
    batch_steps = steps_per_epoch(plan.samples_per_epoch, batch, d.world_size)
    resumed = Resumed(0, 0, None, {"metric": t.best_metric, "score": None, "epoch": None})
    if resume_from is not None:
        resumed = _restore(resume_from, plan, cfg, d, (model, optimizer, scheduler), batch_steps, batch)
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
    data = _data_source(cfg, d, plan, model, batch, batch_steps)
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


@dataclass(frozen=True)
class ShardData:
    """A run's batches streamed from its shards: images, for the whole model (the other data
    source is the feature cache's :class:`~serwild.trainer.features.FeatureData`)."""

    plan: DataPlan
    cfg: Config
    d: Dist
    steps: int  # batches per epoch, every rank
    batch: int  # this rank's validation batch

    def train_batches(self, epoch: int, first: int, rank: int, world_size: int, batch: int) -> Any:
        """Batches ``first`` … of rank ``rank``'s ``epoch`` in a world of ``world_size`` ranks of
        ``batch`` samples (another world's, for a resumed epoch that world began)."""
        t, on_gpu = self.cfg.train, self.d.device.type == "cuda"  # uint8 batches, pinned, normalised on the GPU
        return make_train_loader(self.plan.train, self.plan.classes, batch, self.steps,
                                 seed=train_seed(self.cfg), epoch=epoch, rank=rank, world_size=world_size,
                                 num_workers=t.num_workers, prefetch_factor=t.prefetch_factor,
                                 shuffle_buffer=t.shuffle_buffer, start_batch=first, pin_memory=on_gpu,
                                 as_uint8=on_gpu)

    def val_batches(self) -> Any:
        val, on_gpu = self.plan.val, self.d.device.type == "cuda"
        if val is None:
            return iter(())
        return make_eval_loader(val.urls, self.batch, self.cfg.train.num_workers, self.d.rank, self.d.world_size,
                                counts=val.counts, classes=self.plan.classes, as_uint8=on_gpu,
                                pin_memory=on_gpu, remote=val.remote)

    def net(self, model: nn.Module) -> nn.Module:
        return model


def _data_source(cfg: Config, d: Dist, plan: DataPlan, model: nn.Module, batch: int,
                 steps: int) -> ShardData | FeatureData:
    """The feature cache where it is on and exact, else the streamed shards."""
    return _feature_data(cfg, d, plan, model, batch, steps) or ShardData(plan, cfg, d, steps, batch)


def _feature_data(cfg: Config, d: Dist, plan: DataPlan, model: nn.Module, batch: int,
                  steps: int) -> FeatureData | None:
    """The cached features of this run's shards, or None where the cache is off. Every rank
    computes its share of the build's missing cache files (all conditions and folds, so every
    run of the build reuses them); ``agree`` is the barrier, and a data error on one rank
    stops all of them."""
    t = cfg.train
    prefix = resolve_feature_cache(t.feature_cache, t.freeze or [])
    if prefix is None:
        return None
    if plan.build.is_remote:  # the cache is written next to the build: a local folder only
        if t.feature_cache == "on":
            raise UsageError(f"train.feature_cache=on needs a local build folder, not {plan.location}")
        log(d, f"note: feature cache off: {plan.location} is not a local folder")
        return None
    spec = cache_spec(t.feature_cache_dir or default_cache_root(plan.location), plan.manifest["fingerprint"],
                      model, prefix)
    built = agree(d, lambda: build_feature_cache(plan.location, cache_records(plan.manifest, t.dataset), model,
                                                  d.device, spec, plan.classes, rank=d.rank,
                                                  world_size=d.world_size, batch_size=batch,
                                                  num_workers=t.num_workers), on=True)
    for note in (n for b in built if b for n in b.notes):  # stale or unreadable files, rebuilt by any rank
        log(d, note)
    log(d, f"feature cache {spec.dir}: {sum(b.written for b in built if b)} shard(s) computed, "
           f"{sum(b.skipped for b in built if b)} reused")
    place = d.device if d.device.type == "cuda" else None  # a GPU holds all features; a CPU memory-maps them
    val = (load_feature_cache(spec, plan.val_records, device=place, build_dir=plan.location)
           if plan.val_records else None)
    train = load_feature_cache(spec, plan.train_records, device=place, build_dir=plan.location)
    return FeatureData(prefix, train, val, steps, train_seed(cfg), batch, d.rank, d.world_size)


def per_rank_batch(t: Any, d: Dist) -> int:
    """This rank's batch: ``train.batch_size_per_rank``, else the global ``train.batch_size`` divided
    across ranks."""
    if t.batch_size_per_rank is not None:
        return int(t.batch_size_per_rank)
    global_batch = t.batch_size
    batch = global_batch // d.world_size
    if batch < 1:
        raise UsageError(f"train.batch_size={global_batch} is smaller than the {d.world_size} ranks")
    if global_batch % d.world_size:
        log(d, f"note: batch {global_batch} is not divisible by {d.world_size} ranks; using "
               f"{batch} per rank ({batch * d.world_size} in all)")
    return batch


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
           + (f", balance weights ({', '.join(f'{c} {w:.2f}' for c, w in zip(run.plan.classes, run.loss_weight))})"
              if run.loss_weight is not None else ""))
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
        stats = train_one_epoch(run, _train_loader(run, epoch, first), epoch, first, carried)
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


def train_seed(cfg: Config) -> int:
    """The seed of a run's data order and dropout: ``train.seed``, else the build's ``seed`` (so
    several training seeds can run on one build, and runs that set none train as before)."""
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


def _train_loader(run: Run, epoch: int, first: int = 0) -> Any:
    """Batches ``first`` … ``run.steps - 1`` of this rank's ``epoch``: the cached features or the
    streamed shards, both exact epochs in an order fixed by (train seed, epoch, rank, world size).
    An epoch begun by another number of ranks (a mid-epoch last.pt) continues as they dealt it."""
    if first and run.streams is not None:
        return _regrouped(run, epoch, first, *run.streams)
    return _stream(run, epoch, first, run.d.rank, run.d.world_size, run.batch)


def _stream(run: Run, epoch: int, first: int, rank: int, world_size: int, batch: int) -> Any:
    """Batches ``first`` … ``run.steps - 1`` of rank ``rank``'s ``epoch`` in a world of
    ``world_size`` ranks of ``batch`` samples each, from the run's data source."""
    return run.data.train_batches(epoch, first, rank, world_size, batch)


def _regrouped(run: Run, epoch: int, first: int, ranks: int, batch: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """This rank's share of batches ``first`` … of an epoch that ``ranks`` ranks of ``batch``
    began (the same global batch as this run's, :func:`_continuation`): each global batch is
    theirs, their batches side by side in rank order, and rank r takes samples
    ``[r * run.batch, (r + 1) * run.batch)`` of it. So the epoch ends on exactly the samples and
    global batches the old world would have trained, whatever the new world size; only the
    rounding of the gradient's mean and the dropout masks differ. Each rank reads just the old
    streams its span overlaps."""
    lo, hi = run.d.rank * run.batch, (run.d.rank + 1) * run.batch
    mine = [r for r in range(ranks) if r * batch < hi and (r + 1) * batch > lo]
    base = mine[0] * batch
    for parts in zip(*(_stream(run, epoch, first, r, ranks, batch) for r in mine)):
        yield tuple(torch.cat(column)[lo - base:hi - base] for column in zip(*parts))


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
        # then leaves a best.pt newer than last.pt's record, which resuming adopts (_best_on_disk),
        # never a last.pt naming a best.pt that was not written.
        ckpt_io.save_checkpoint(run.run_dir / "best.pt", ckpt_io.weights_only(full))
    ckpt_io.save_checkpoint(run.run_dir / "last.pt", full)
    v = f"  val WA {val['wa']:.3f} UA {val['ua']:.3f} wF1 {val['weighted_f1']:.3f}" if val else ""
    lr = ", ".join(f"{x:.2g}" for x in record["lr"])
    stage("train", f"epoch {epoch + 1}/{t.epochs}  loss {record['train_loss']:.4f}{v}  lr {lr}  "
                   f"{record['images_per_s']:.0f} img/s ({record['input_wait_fraction']:.0%} waiting for input)  "
                   f"{record['seconds']:.1f} s; {run.budget.eta(epoch + 1 - run.start, t.epochs - epoch - 1)}")
    if (note := divergence_note(record["train_loss"], len(run.plan.classes), lr)) is not None:
        log(d, note)


def balanced_weights(records: list[dict[str, Any]], classes: list[str]) -> list[float]:
    """Each class's loss weight, N / (K · n_k) over the training shards' samples (scikit-learn's
    ``compute_class_weight("balanced")``): a class with half the samples counts twice as much per
    sample. A class with no training sample gets 0 (no loss to weight)."""
    counts = [sum(int((r.get("class_counts") or {}).get(c, 0)) for r in records) for c in classes]
    total, k = sum(counts), len(classes)
    return [total / (k * n) if n else 0.0 for n in counts]


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


def _checkpoint(run: Run, epoch: int, rng: list, metrics: dict | None) -> dict[str, Any]:
    cfg, plan = run.cfg, run.plan
    return {"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "epoch": epoch, "rng": rng, "config": to_dict(cfg),
            "classes": plan.classes, "dataset": cfg.train.dataset,
            "manifest_fingerprint": plan.manifest["fingerprint"], "shards": plan.location,
            "recipe": describe(cfg.train), "metrics": metrics, "best": run.best, "arch": cfg.train.arch,
            "serwild_version": __version__, "world_size": run.d.world_size, "steps": run.steps}


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


@dataclass(frozen=True)
class Resumed:
    """Where a run continues: after ``epoch`` completed epochs and ``step`` batches of the next."""

    epoch: int
    step: int
    carried: list[float] | None  # the loss sum, correct and samples of those ``step`` batches
    best: dict[str, Any]
    streams: tuple[int, int] | None = None  # (ranks, batch) that began that epoch, where not this run's


def _restore(path: Path, plan: DataPlan, cfg: Config, d: Dist, state: tuple[nn.Module, Any, Any],
             steps: int, batch: int) -> Resumed:
    """Load last.pt into model, optimiser, scheduler and RNGs. A mid-epoch last.pt continues where
    its global batches are this run's (:func:`_continuation`). Where the world size changed (a
    node lost, or one more), one line says so and dropout is re-seeded from (seed, position, rank)."""
    model, optimizer, scheduler = state
    ck = ckpt_io.load_checkpoint(path, map_location=d.device)
    ckpt_io.check_compatible(ck, plan.manifest, cfg.train.dataset, str(path),
                             hint=": start a new run (another train.name) instead of resuming")
    if "optimizer" not in ck:
        raise UsageError(f"{path} holds weights only (no optimiser state): it cannot be resumed")
    start, step = int(ck["epoch"]), int(ck.get("step", 0))
    rng = ck.get("rng") or []
    streams = _continuation(path, ck, d, steps, batch) if step else None
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if len(rng) == d.world_size:
        ckpt_io.set_rng_state(rng[d.rank])
    else:
        how = "shrank" if d.world_size < len(rng) else "grew"
        where = (f"epoch {start + 1} goes on from batch {step + 1} of {steps} with the same global batches, "
                 f"regrouped" if step else f"training goes on after epoch {start}")
        log(d, f"note: the world {how} from {len(rng)} to {d.world_size} rank(s) since last.pt was saved: {where}; "
               f"dropout is re-seeded (deterministic, but not an uninterrupted run's)")
        seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.RESUMED, start, step, d.rank))
    best = _best_on_disk(path.parent / "best.pt", ck.get("best")) or {"metric": cfg.train.best_metric,
                                                                        "score": None, "epoch": None}
    return Resumed(start, step, ck.get("partial") if step else None, best, streams)


def _best_on_disk(best_pt: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The best epoch a resumed run goes on from: last.pt's record, or best.pt's own where a kill
    came after best.pt was written and before last.pt was (best.pt then holds a later epoch that
    last.pt does not know, and the record must name what the file holds)."""
    if not best_pt.is_file():
        return recorded
    on_disk = ckpt_io.load_checkpoint(best_pt).get("best")
    later = (isinstance(on_disk, dict) and on_disk.get("epoch") is not None
             and (recorded is None or recorded.get("epoch") is None or on_disk["epoch"] > recorded["epoch"]))
    return on_disk if later else recorded


def _continuation(path: Path, ck: dict[str, Any], d: Dist, steps: int, batch: int) -> tuple[int, int] | None:
    """How this run continues the epoch a mid-epoch ``ck`` stopped in: None, each rank its own
    stream, where the world is the one that saved it; (ranks, batch) of the streams to regroup
    (:func:`_regrouped`) where the world size changed but the global batch and the batches per
    epoch did not. Regrouping, rather than starting the epoch again from the last epoch's end
    (which last.pt no longer holds), keeps the work done and trains every sample of the epoch
    once, in the global batches an uninterrupted run would use. Anything else is refused."""
    ranks, saved_batch, saved_steps = len(ck.get("rng") or []), ck.get("batch"), int(ck.get("steps", steps))
    if saved_steps == steps and ranks == d.world_size and saved_batch in (None, batch):
        return None
    if saved_steps == steps and saved_batch is not None and ranks * int(saved_batch) == d.world_size * batch:
        return ranks, int(saved_batch)
    # A last.pt of an older serwild does not say its batch: only its own world can continue it.
    saved, hint = ((f"{ranks} rank(s) × {saved_batch} samples", "the same global batch (train.batch_size) and "
                    "samples per epoch") if saved_batch is not None else
                   (f"{ranks} rank(s)", f"--nproc {ranks} and the same batch size"))
    raise UsageError(f"{path} was saved in the middle of epoch {int(ck['epoch']) + 1} (batch {ck['step']} of "
                     f"{saved_steps}, by {saved}); this run has {steps} batches per epoch of {d.world_size} "
                     f"rank(s) × {batch} samples, so it cannot continue that epoch exactly: resume with {hint}, "
                     f"or start a new run")


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
