"""One training process (one rank): ``main(cfg)`` = :func:`prepare`, then :func:`fit` runs
every epoch (``train_one_epoch`` → validation → metrics + checkpoints). Started by torchrun:

    torchrun --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [--resume] [k=v …]

or by ``serwild train`` (which runs exactly that). Rank 0 logs, draws the progress bar and
writes checkpoints; every rank runs the same number of batches per epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from serwild import __version__, atomic, lock, seeds
from serwild import checkpoint as ckpt_io
from serwild.config import NOT_BUILD_KEYS, Config, to_dict
from serwild.data.loaders import make_eval_loader, make_train_loader, steps_per_epoch
from serwild.data.transforms import normalise
from serwild.errors import UsageError
from serwild.metrics import scores_from_confusion
from serwild.progress import progress
from serwild.trainer.distributed import Dist, all_gather_object, all_reduce_sum, barrier, setup, teardown
from serwild.trainer.features import (
    CachedTrainData,
    build_feature_cache,
    cache_records,
    cache_spec,
    default_cache_root,
    head_from,
    load_feature_cache,
    resolve_feature_cache,
)
from serwild.trainer.history import append_jsonl, plot_curves, read_jsonl
from serwild.trainer.model import build_model, fetch_imagenet_weights
from serwild.trainer.preflight import DataPlan, agree, disk_note, plan_data, prepare_run_dir, resolve, verify_shards
from serwild.trainer.recipe import describe, make_optimizer, make_scheduler

T = TypeVar("T")
FAULT_ENV = "SERWILD_FAULT"  # "epoch:batch:rank" (0-based): that rank exits there, first attempt only
FAULT_EXIT = 17


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


def autocast(d: Dist, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(d.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def with_fault(loader: Iterable[T], epoch: int, rank: int) -> Iterable[T]:
    """The loader as it is, unless the test hook ``SERWILD_FAULT=epoch:batch:rank`` names this
    rank and epoch: then this rank dies at that batch, as a crash would (first torchrun
    attempt only, so a restart can be tested)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return loader
    at_epoch, at_batch, at_rank = (int(x) for x in spec.split(":"))
    if (at_epoch, at_rank) != (epoch, rank):
        return loader

    def faulty() -> Iterator[T]:
        for i, item in enumerate(loader):
            if i == at_batch:
                print(f"{FAULT_ENV}: rank {rank} exits at epoch {epoch} batch {i}", file=sys.stderr, flush=True)
                os._exit(FAULT_EXIT)
            yield item

    return faulty()


def train_one_epoch(run: Run, loader: Any, epoch: int, first: int = 0,
                    carried: list[float] | None = None) -> dict[str, Any]:
    """Batches ``first`` … ``run.steps - 1`` of ``epoch`` (``first`` > 0: resumed mid-epoch,
    ``carried``: the loss sum, correct and samples of the batches before it, all ranks); writes
    a mid-epoch last.pt whenever ``train.checkpoint_every`` says so. Returns local loss sum,
    counts and seconds."""
    model, optimizer, scaler, dtype, d, cfg, steps = (run.ddp, run.optimizer, run.scaler, run.dtype, run.d,
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
    batches_in = InputTimer(with_fault(loader, epoch, d.rank))
    for images, labels in batches_in:
        images = images.to(d.device, non_blocking=True)
        labels = labels.to(d.device, non_blocking=True)
        x = normalise(images) if images.dtype == torch.uint8 else images
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(d, dtype):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)
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
    epoch's loss sums so far, so that ``--resume`` continues at the next batch exactly."""
    d = run.d
    totals = all_reduce_sum(torch.tensor([float(sums[0]), float(sums[1]), float(sums[2])], dtype=torch.float64),
                            d).tolist()
    rng = all_gather_object(ckpt_io.rng_state(), d)
    if d.is_main:
        ck = {**_checkpoint(run, epoch, rng, None), "step": step, "partial": totals}
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


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, d: Dist, num_classes: int, dtype: torch.dtype | None) -> torch.Tensor:
    """Confusion matrix over this rank's share, summed over ranks (each sample counted once).

    ``model`` is the unwrapped module: DDP's forward could start collectives, and ranks may
    hold different numbers of validation batches (or none).
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, labels, _ in loader:
        images = images.to(d.device, non_blocking=True)
        x = normalise(images) if images.dtype == torch.uint8 else images
        with autocast(d, dtype):
            preds = model(x).argmax(1)
        cm += confusion(labels, preds.cpu(), num_classes)
    return all_reduce_sum(cm, d)


def confusion(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted."""
    idx = labels.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(idx.cpu(), minlength=num_classes * num_classes).view(num_classes, num_classes)


# ----------------------------------------------------------------------------- a run


@dataclass
class Run:
    """Everything one rank trains with; built by :func:`prepare`, advanced by :func:`fit`."""

    cfg: Config
    d: Dist
    plan: DataPlan
    run_dir: Path
    model: nn.Module  # the whole AlexNet: optimiser, checkpoints and resume always use it
    net: nn.Module  # what a step runs: the model, or its head after the cached frozen prefix
    ddp: nn.Module  # ``net``, wrapped in DDP when distributed
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
    cache: CachedTrainData | None = None  # training features (the feature cache is on)
    val_cache: CachedTrainData | None = None


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
    model = build_model(len(plan.classes), t.pretrained)
    if t.channels_last and d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.to(d.device)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t)
    batch_steps = steps_per_epoch(plan.samples_per_epoch, batch, d.world_size)
    resumed = Resumed(0, 0, None, {"metric": t.best_metric, "score": None, "epoch": None})
    if resume_from is not None:
        resumed = _restore(resume_from, plan, cfg, d, (model, optimizer, scheduler), batch_steps)
        at = f"epoch {resumed.epoch + 1} batch {resumed.step}" if resumed.step else f"after epoch {resumed.epoch}"
        log(d, f"resuming {run_dir} at {at} (lr {[g['lr'] for g in optimizer.param_groups]})")
    else:
        seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.RANK, d.rank))  # dropout differs per rank
    start, best = resumed.epoch, resumed.best
    if d.is_main:
        _start_history(cfg, plan, run_dir, start)
        if (low := disk_note(run_dir, model, optimizer)) is not None:
            log(d, low)
    dtype = amp_dtype(t.amp, d.device)
    net, cache, val_cache = _feature_cache(cfg, d, plan, model, batch)
    ddp = (DistributedDataParallel(net, device_ids=[d.device] if d.device.type == "cuda" else None)
           if d.distributed else net)
    return Run(cfg=cfg, d=d, plan=plan, run_dir=run_dir, model=model, net=net, ddp=ddp, optimizer=optimizer,
               scheduler=scheduler, scaler=torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16),
               dtype=dtype, batch=batch, steps=batch_steps, start=start, best=best, start_step=resumed.step,
               carried=resumed.carried, cache=cache, val_cache=val_cache)


def _feature_cache(cfg: Config, d: Dist, plan: DataPlan, model: nn.Module, batch: int
                   ) -> tuple[nn.Module, CachedTrainData | None, CachedTrainData | None]:
    """(what a step runs, training features, validation features): the model and no cache, or
    the head after the frozen prefix and the cached features of this run's shards. Every rank
    computes its share of the build's missing cache files (all conditions and folds, so every
    run of the build reuses them); ``agree`` is the barrier, and a data error on one rank
    stops all of them."""
    t = cfg.train
    prefix = resolve_feature_cache(t.feature_cache, t.freeze or [])
    if prefix is None:
        return model, None, None
    if plan.build.is_remote:  # the cache is written next to the build: a local folder only
        if t.feature_cache == "on":
            raise UsageError(f"train.feature_cache=on needs a local build folder, not {plan.location}")
        log(d, f"note: feature cache off: {plan.location} is not a local folder")
        return model, None, None
    spec = cache_spec(t.feature_cache_dir or default_cache_root(plan.location), plan.manifest["fingerprint"],
                      model, prefix)
    built = agree(d, lambda: build_feature_cache(plan.location, cache_records(plan.manifest, t.dataset), model,
                                                  d.device, spec, len(plan.classes), rank=d.rank,
                                                  world_size=d.world_size, batch_size=batch,
                                                  num_workers=t.num_workers), on=True)
    for note in (n for b in built if b for n in b.notes):  # stale or unreadable files, rebuilt by any rank
        log(d, note)
    log(d, f"feature cache {spec.dir}: {sum(b.written for b in built if b)} shard(s) computed, "
           f"{sum(b.skipped for b in built if b)} reused")
    place = d.device if d.device.type == "cuda" else None  # a GPU holds all features; a CPU memory-maps them
    val = (load_feature_cache(spec, plan.val_records, device=place, build_dir=plan.location)
           if plan.val_records else None)
    return head_from(model, prefix), load_feature_cache(spec, plan.train_records, device=place,
                                                        build_dir=plan.location), val


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
    between the two writes)."""
    kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] <= start]
    atomic.write_jsonl(run_dir / "metrics.jsonl", kept)
    atomic.write_text(run_dir / "config.yaml", run_config_yaml(cfg, plan))


def run_config_yaml(cfg: Config, plan: DataPlan) -> str:
    """The resolved config as the run used it: the build's own settings (corpus, audio, split, …,
    from its manifest, not this config's defaults), headed by the build's location and fingerprint."""
    data = to_dict(cfg)
    built = plan.manifest.get("config") or {}
    for key in data:
        if key not in NOT_BUILD_KEYS and key in built:
            data[key] = built[key]
    head = f"# trained on the build {plan.location} (manifest fingerprint {plan.manifest['fingerprint']})\n"
    return head + yaml.safe_dump(data, sort_keys=False)


def fit(run: Run) -> dict[str, Any]:
    """Every remaining epoch: train, validate, log, checkpoint."""
    t, d = run.cfg.train, run.d
    log(d, f"{run.run_dir}: {t.dataset} {list(t.conditions)} fold {run.cfg.cv.fold}, {run.plan.train.samples} "
           f"training samples in {len(run.plan.train.urls)} shards, {run.steps} steps/epoch × {d.world_size} "
           f"rank(s) × batch {run.batch}, recipe {describe(t)['name']} (pretrained {t.pretrained}), "
           f"device {d.device}, amp {run.dtype}")
    val = None
    for epoch in range(run.start, t.epochs):
        lrs = [g["lr"] for g in run.optimizer.param_groups]
        first, carried = (run.start_step, run.carried) if epoch == run.start else (0, None)
        stats = train_one_epoch(run, _train_loader(run, epoch, first), epoch, first, carried)
        run.scheduler.step()
        val = _validate(run)
        record = {"epoch": epoch + 1, "steps": run.steps, **_train_summary(stats, d), "val": val, "lr": lrs,
                  "recipe": describe(t)["name"], "world_size": d.world_size}
        _end_epoch(run, epoch, record, val)
        # No rank starts the next epoch before last.pt is complete: a rank killed there can
        # then only cost the epoch in progress.
        barrier(d)
    return _finish(run, val)


def train_seed(cfg: Config) -> int:
    """The seed of a run's data order and dropout: ``train.seed``, else the build's ``seed`` (so
    several training seeds can run on one build, and runs that set none train as before)."""
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


def _train_loader(run: Run, epoch: int, first: int = 0) -> Any:
    """Batches ``first`` … ``run.steps - 1`` of this rank's ``epoch``: the cached features or the
    streamed shards, both exact epochs in an order fixed by (train seed, epoch, rank, world size)."""
    t, d, seed = run.cfg.train, run.d, train_seed(run.cfg)
    if run.cache is not None:
        return run.cache.batches(run.batch, run.steps, seed=seed, epoch=epoch, rank=d.rank,
                                 world_size=d.world_size, start=first)
    on_gpu = d.device.type == "cuda"  # uint8 batches, pinned, normalised on the GPU
    return make_train_loader(run.plan.train, len(run.plan.classes), run.batch, run.steps, seed=seed,
                             epoch=epoch, rank=d.rank, world_size=d.world_size, num_workers=t.num_workers,
                             prefetch_factor=t.prefetch_factor, shuffle_buffer=t.shuffle_buffer,
                             start_batch=first, pin_memory=on_gpu, as_uint8=on_gpu)


def _validate(run: Run) -> dict[str, Any] | None:
    if run.plan.val is None:
        return None
    d, on_gpu = run.d, run.d.device.type == "cuda"
    k = len(run.plan.classes)
    if run.val_cache is not None:
        batches = run.val_cache.eval_batches(run.batch, d.rank, d.world_size)
        return scores_from_confusion(evaluate(run.net, batches, d, k, run.dtype).numpy(), run.plan.classes)
    loader = make_eval_loader(run.plan.val.urls, run.batch, run.cfg.train.num_workers, d.rank, d.world_size,
                              counts=run.plan.val.counts, num_classes=k, as_uint8=on_gpu, pin_memory=on_gpu,
                              remote=run.plan.val.remote)
    return scores_from_confusion(evaluate(run.model, loader, d, k, run.dtype).numpy(), run.plan.classes)


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
    ckpt_io.save_checkpoint(run.run_dir / "last.pt", full)
    if improved or run.plan.val is None:  # no validation fold: best.pt is the latest model
        # Weights only: the optimiser's state (one or two copies of the weights) is what resuming
        # needs, and resuming reads last.pt alone.
        ckpt_io.save_checkpoint(run.run_dir / "best.pt", ckpt_io.weights_only(full))
    v = f"  val acc {val['accuracy']:.3f} UA {val['ua']:.3f} wF1 {val['weighted_f1']:.3f}" if val else ""
    lr = ", ".join(f"{x:.2g}" for x in record["lr"])
    log(d, f"epoch {epoch + 1}/{t.epochs}  loss {record['train_loss']:.4f}{v}  lr {lr}  "
           f"{record['images_per_s']:.0f} img/s ({record['input_wait_fraction']:.0%} waiting for input)  "
           f"{record['seconds']:.1f} s")


def _checkpoint(run: Run, epoch: int, rng: list, metrics: dict | None) -> dict[str, Any]:
    cfg, plan = run.cfg, run.plan
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "epoch": epoch, "rng": rng, "config": to_dict(cfg),
            "classes": plan.classes, "dataset": cfg.train.dataset,
            "manifest_fingerprint": plan.manifest["fingerprint"], "shards": plan.location,
            "recipe": describe(cfg.train), "metrics": metrics, "best": run.best, "arch": "alexnet",
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


def _restore(path: Path, plan: DataPlan, cfg: Config, d: Dist, state: tuple[nn.Module, Any, Any],
             steps: int) -> Resumed:
    """Load last.pt into model, optimiser, scheduler and RNGs. A mid-epoch last.pt continues only
    where its batches are this run's batches (same ranks, same steps per epoch); an epoch-end one
    with another world size continues with re-seeded dropout, and says so."""
    model, optimizer, scheduler = state
    ck = ckpt_io.load_checkpoint(path, map_location=d.device)
    ckpt_io.check_compatible(ck, plan.manifest, cfg.train.dataset, str(path),
                             hint=": start a new run (another train.name) instead of resuming")
    if "optimizer" not in ck:
        raise UsageError(f"{path} holds weights only (no optimiser state): it cannot be resumed")
    start, step = int(ck["epoch"]), int(ck.get("step", 0))
    rng = ck.get("rng") or []
    if step and (len(rng) != d.world_size or int(ck.get("steps", steps)) != steps):
        raise UsageError(f"{path} was saved in the middle of epoch {start + 1} (batch {step} of "
                         f"{ck.get('steps')}) by {len(rng)} rank(s); this run has {d.world_size} rank(s) and "
                         f"{steps} batches per epoch, so it cannot continue that epoch exactly: resume with "
                         f"--nproc {len(rng)} and the same batch size, or start a new run")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    if len(rng) == d.world_size:
        ckpt_io.set_rng_state(rng[d.rank])
    else:
        log(d, f"note: last.pt holds random states for {len(rng)} rank(s), this run has {d.world_size}: "
               f"dropout streams are re-seeded (deterministic, but not those of an uninterrupted run)")
        seeds.seed_everything(seeds.derive(train_seed(cfg), seeds.RESUMED, start, d.rank))
    best = ck.get("best") or {"metric": cfg.train.best_metric, "score": None, "epoch": None}
    return Resumed(start, step, ck.get("partial") if step else None, best)


def _finish(run: Run, val: dict | None) -> dict[str, Any]:
    records = read_jsonl(run.run_dir / "metrics.jsonl") if run.d.is_main else []
    if run.d.is_main and not run.cfg.train.keep_last:  # a finished run keeps its weights-only best.pt
        (run.run_dir / "last.pt").unlink(missing_ok=True)
    if run.d.is_main and records:
        plot_curves(records, run.run_dir / "curves.png", f"{run.run_dir.name} ({records[-1]['recipe']} recipe)")
        best = run.best
        how = (f"best {best['metric']} {best['score']:.4f} at epoch {best['epoch']}" if best["epoch"]
               else "no validation fold: the last epoch's model")
        log(run.d, f"done: {run.run_dir}/best.pt ({how})")
    return {"run_dir": str(run.run_dir), "best": run.best, "last_val": val}
