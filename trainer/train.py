"""One training process (one rank): ``main(cfg)`` = setup, then per epoch
``train_one_epoch`` → ``evaluate`` → metrics + checkpoints. Started by torchrun:

    torchrun --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [--resume] [k=v …]

or by ``serwild train`` (which runs exactly that). Rank 0 logs, draws the progress bar and
writes checkpoints; every rank runs the same number of batches per epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from serwild import __version__
from serwild.config import Config, dump_yaml, to_dict
from serwild.errors import UsageError
from serwild.trainer import checkpoint as ckpt_io
from serwild.trainer.data import make_eval_loader, make_train_loader, seed_everything, steps_per_epoch
from serwild.trainer.distributed import Dist, all_gather_object, all_reduce_sum, barrier, setup, teardown
from serwild.trainer.metrics import append_jsonl, confusion, plot_curves, read_jsonl, scores
from serwild.trainer.model import build_model, fetch_imagenet_weights
from serwild.trainer.recipe import describe, make_optimizer, make_scheduler
from serwild.trainer.setup import DataPlan, agree, plan_data, prepare_run_dir, resolve, verify_shards
from serwild.trainer.transforms import normalise

FAULT_ENV = "SERWILD_FAULT"  # "epoch:batch:rank" (0-based): that rank exits there, first attempt only


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


def _maybe_fault(epoch: int, batch: int, rank: int) -> None:
    """Test hook: kill this rank mid-epoch, as a crash would, on torchrun's first attempt only."""
    spec = os.environ.get(FAULT_ENV)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if spec and first_attempt and [int(x) for x in spec.split(":")] == [epoch, batch, rank]:
        print(f"{FAULT_ENV}: rank {rank} exits at epoch {epoch} batch {batch}", file=sys.stderr, flush=True)
        os._exit(17)


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, dtype: torch.dtype | None, d: Dist, cfg: Config,
                    epoch: int, steps: int) -> dict[str, Any]:
    """One pass of exactly ``steps`` batches; returns local loss sum, counts and seconds."""
    from tqdm import tqdm

    model.train()
    channels_last = cfg.train.channels_last and d.device.type == "cuda"
    loss_sum = torch.zeros((), dtype=torch.float64, device=d.device)
    correct = torch.zeros((), dtype=torch.int64, device=d.device)
    samples = batches = 0
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch",
               disable=(not d.is_main) or None, leave=False, dynamic_ncols=True, file=sys.stderr)
    for images, labels in loader:
        _maybe_fault(epoch, batches, d.rank)
        images = images.to(d.device, non_blocking=True)
        labels = labels.to(d.device, non_blocking=True)
        x = normalise(images) if images.dtype == torch.uint8 else images
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(d, dtype):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights (and the other ranks)
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1} batch {batches} "
                                     f"on rank {d.rank}: lower the learning rate or check the shards")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        samples += labels.numel()
        batches += 1
        bar.update(1)
        if d.is_main and batches % 10 == 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    return {"loss_sum": loss_sum, "correct": correct, "samples": samples, "batches": batches,
            "seconds": time.perf_counter() - start}


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


def _checkpoint(cfg: Config, plan: DataPlan, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any, epoch: int, rng: list, metrics: dict | None, best: dict) -> dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng, "config": to_dict(cfg),
            "classes": plan.classes, "dataset": cfg.train.dataset,
            "manifest_fingerprint": plan.manifest["fingerprint"], "shards": str(plan.build_dir),
            "recipe": describe(cfg.train), "metrics": metrics, "best": best, "arch": "alexnet",
            "serwild_version": __version__}


def main(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns the final summary (same on every rank)."""
    d = setup(cfg.train.device, cfg.train.timeout_s)
    try:
        return _main(resolve(cfg), d, resume, overwrite)
    finally:
        teardown(d)


def _main(cfg: Config, d: Dist, resume: bool, overwrite: bool) -> dict[str, Any]:
    t = cfg.train
    plan = plan_data(cfg)
    run_dir = Path(t.run_dir) / str(t.name)
    resume_from = agree(d, lambda: prepare_run_dir(run_dir, resume, overwrite), on=d.is_main)[0]
    agree(d, lambda: verify_shards(plan, t.verify), on=d.is_main)
    if t.pretrained == "imagenet":  # one download per node, before any rank needs the file
        agree(d, fetch_imagenet_weights, on=d.local_rank == 0)
    num_classes = len(plan.classes)
    batch = t.batch_size // d.world_size
    if batch < 1:
        raise UsageError(f"train.batch_size={t.batch_size} is smaller than the {d.world_size} ranks")
    if t.batch_size % d.world_size:
        log(d, f"note: batch {t.batch_size} is not divisible by {d.world_size} ranks; using "
               f"{batch} per rank ({batch * d.world_size} in all)")
    steps = steps_per_epoch(plan.samples_per_epoch, batch, d.world_size)

    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 256 × 256 inputs: pick the fastest kernels once
        torch.set_float32_matmul_precision("high")  # TF32 where AMP is off
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(num_classes, t.pretrained)
    if t.channels_last and d.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.to(d.device)
    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t)
    start, best = 0, {"metric": t.best_metric, "score": None, "epoch": None}
    if resume_from is not None:
        start, best = _restore(resume_from, plan, cfg, d, model, optimizer, scheduler)
        log(d, f"resuming {run_dir} after epoch {start} (lr {[g['lr'] for g in optimizer.param_groups]})")
    else:
        seed_everything(cfg.seed * 1000 + d.rank)  # dropout differs per rank
    if d.is_main:  # drop lines of epochs the checkpoint does not hold (a kill between the two writes)
        kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] <= start]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        dump_yaml(cfg, run_dir / "config.yaml")
    dtype = amp_dtype(t.amp, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16)
    ddp = (DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)
           if d.distributed else model)
    recipe = describe(t)
    log(d, f"{run_dir}: {t.dataset} {list(t.conditions)} fold {cfg.cv.fold}, {plan.train.samples} training "
           f"samples in {len(plan.train.urls)} shards, {steps} steps/epoch × {d.world_size} rank(s) × batch "
           f"{batch}, recipe {recipe['name']} (pretrained {t.pretrained}), device {d.device}, amp {dtype}")
    last_metrics = None
    on_gpu = d.device.type == "cuda"  # uint8 batches, pinned, normalised on the GPU
    for epoch in range(start, t.epochs):
        lrs = [g["lr"] for g in optimizer.param_groups]
        loader = make_train_loader(plan.train, num_classes, batch, steps, seed=cfg.seed, epoch=epoch,
                                   rank=d.rank, num_workers=t.num_workers, prefetch_factor=t.prefetch_factor,
                                   shuffle_buffer=t.shuffle_buffer, pin_memory=on_gpu, as_uint8=on_gpu)
        stats = train_one_epoch(ddp, loader, optimizer, scaler, dtype, d, cfg, epoch, steps)
        scheduler.step()
        val = None
        if plan.val is not None:
            loader = make_eval_loader(plan.val.urls, batch, t.num_workers, d.rank, d.world_size,
                                      counts=plan.val.counts, num_classes=num_classes, as_uint8=on_gpu,
                                      pin_memory=on_gpu)
            val = scores(evaluate(model, loader, d, num_classes, dtype).numpy(), plan.classes)
        record = {"epoch": epoch + 1, "steps": steps, **_train_summary(stats, d), "val": val, "lr": lrs,
                  "recipe": recipe["name"], "world_size": d.world_size}
        rng = all_gather_object(ckpt_io.rng_state(), d)
        improved = val is not None and (best["score"] is None or val[t.best_metric] > best["score"])
        if improved:
            best = {"metric": t.best_metric, "score": val[t.best_metric], "epoch": epoch + 1}
        if d.is_main:
            append_jsonl(run_dir / "metrics.jsonl", record)
            ck = _checkpoint(cfg, plan, model, optimizer, scheduler, epoch + 1, rng, val, best)
            ckpt_io.save_checkpoint(run_dir / "last.pt", ck)
            if improved or plan.val is None:  # no validation fold: best.pt is the latest model
                ckpt_io.link_checkpoint(run_dir / "last.pt", run_dir / "best.pt")
            v = (f"  val acc {val['accuracy']:.3f} UA {val['ua']:.3f} wF1 {val['weighted_f1']:.3f}"
                 if val else "")
            lr = ", ".join(f"{x:.2g}" for x in lrs)
            log(d, f"epoch {epoch + 1}/{t.epochs}  loss {record['train_loss']:.4f}{v}  lr {lr}  "
                   f"{record['images_per_s']:.0f} img/s  {record['seconds']:.1f} s")
        last_metrics = val
        # No rank starts the next epoch before last.pt is complete: a rank killed there can
        # then only cost the epoch in progress.
        barrier(d)
    return _finish(cfg, d, run_dir, best, last_metrics)


def _train_summary(stats: dict[str, Any], d: Dist) -> dict[str, Any]:
    """Loss, accuracy and speed over all ranks (collectives: every rank calls this)."""
    totals = all_reduce_sum(torch.tensor([stats["loss_sum"].item(), float(stats["correct"].item()),
                                          float(stats["samples"])], dtype=torch.float64), d).tolist()
    seconds = max(all_gather_object(stats["seconds"], d))  # the slowest rank sets the pace
    n = max(1.0, totals[2])
    return {"train_loss": totals[0] / n, "train_accuracy": totals[1] / n, "images_per_s": totals[2] / seconds,
            "seconds": seconds, "batches_per_rank": all_gather_object(stats["batches"], d),
            "samples": int(totals[2])}


def _restore(path: Path, plan: DataPlan, cfg: Config, d: Dist, model: nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, dict]:
    """Load last.pt into model, optimiser, scheduler and RNGs; (completed epochs, best so far)."""
    ck = ckpt_io.load_checkpoint(path, map_location=d.device)
    ckpt_io.check_compatible(ck, plan.manifest, cfg.train.dataset, str(path))
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    start = int(ck["epoch"])
    rng = ck.get("rng") or []
    if len(rng) == d.world_size:
        ckpt_io.set_rng_state(rng[d.rank])
    else:  # another world size: fresh, but still deterministic, streams per rank
        seed_everything(cfg.seed * 1000 + start * 100 + d.rank)
    best = ck.get("best") or {"metric": cfg.train.best_metric, "score": None, "epoch": None}
    return start, best


def _finish(cfg: Config, d: Dist, run_dir: Path, best: dict, val: dict | None) -> dict[str, Any]:
    records = read_jsonl(run_dir / "metrics.jsonl") if d.is_main else []
    if d.is_main and records:
        plot_curves(records, run_dir / "curves.png", f"{run_dir.name} ({records[-1]['recipe']} recipe)")
        how = (f"best {best['metric']} {best['score']:.4f} at epoch {best['epoch']}" if best["epoch"]
               else "no validation fold: the last epoch's model")
        log(d, f"done: {run_dir}/best.pt ({how})")
    return {"run_dir": str(run_dir), "best": best, "last_val": val}
