"""Frozen-feature cache vs the streaming path: same data, same epochs, paper recipe, one process.

    python benchmarks/bench_cache.py                      # tiny synthetic build: ~2.5 min on 2 cores
    python benchmarks/bench_cache.py --shards shards/demo --epochs 3 --batch-size 32

(a) streaming: resampled shards → PNG decode → full AlexNet forward (conv1–conv4 frozen,
``train.recipe=paper``) → backward → SGD step, as the trainer's epoch loop does;
(b) cached: epoch 1 first builds the conv4-feature cache (timed apart), then every epoch
trains the head (conv5 … fc8) on fp16 features from the memory-mapped cache.
Both start from the same weights file (written here: ImageNet's cannot be downloaded, and
speed does not depend on the values), run the same number of steps of the same batch size,
epoch by epoch in turn (a load change on a shared machine hits both); the speed-up is the
median over epochs 2… (the machine's load average is printed: other jobs inflate everything).

Then: the compute bound (full model vs head, forward + backward on in-RAM tensors, no input
pipeline), the first-step loss and gradients through fp32/fp16/bf16 caches vs the uncached
model, and a projection for the paper's whole protocol on this machine and on one GPU (the
GPU figure is an estimate from an assumed throughput, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serwild.builder.build import run_build
from serwild.config import load_config
from serwild.data.epochs import steps_per_epoch
from serwild.data.loaders import epoch_loader, make_eval_loader, make_train_loader, shard_set
from serwild.data.manifest import load_manifest
from serwild.data.transforms import normalise
from serwild.trainer.features import cache_records, cache_spec, head_from, load_feature_cache, resolve_feature_cache
from serwild.trainer.features_write import build_feature_cache
from serwild.trainer.model import build_model
from serwild.trainer.recipe import make_optimizer, make_scheduler, resolve_recipe

# The paper's protocol (configs/iemocap.yaml): AHSN + AESN, clean + 3 SNRs, 80/20 split,
# 5 CV folds, 6 epochs; ~74.9k spectrograms in all (both datasets, 4 conditions, train + test).
PROTOCOL_IMAGES = 74_900
CONDITIONS = 4
TRAIN_FRACTION = 0.8
FOLDS = 5
EPOCHS = 6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_build(root: Path) -> Path:
    """A tiny synthetic build: clean + 3 SNRs, as the paper's (384 training images), serially, no Ray."""
    cfg = load_config(None, ["corpus.kind=synthetic", "corpus.synth_size=tiny", f"corpus.root={root / 'corpus'}",
                             f"noise.dir={root / 'corpus' / 'noise'}", f"out={root / 'shards'}",
                             "datasets=[ahsn]", "snr_db=[15, 20, 40]", "split.folds=5", "shard.max_samples=40"])
    return run_build(cfg, executor="serial")


def paper_model(weights: Path, num_classes: int, overrides: list[str]) -> tuple[nn.Module, torch.optim.Optimizer,
                                                                                 object, object]:
    cfg = load_config(None, ["train.recipe=paper", f"train.pretrained={weights}", *overrides])
    train = resolve_recipe(cfg.train)
    torch.manual_seed(0)  # the same fresh fc8 for both paths
    model = build_model(num_classes, train.pretrained)
    optimizer = make_optimizer(model, train)
    return model, optimizer, make_scheduler(optimizer, train), train


def run_epoch(fn: nn.Module, batches: object, optimizer: torch.optim.Optimizer) -> tuple[float, float, int]:
    """The trainer's step (normalise uint8 on arrival, fp32 cross-entropy, zero_grad, backward, step)."""
    fn.train()
    start, loss_sum, n = time.perf_counter(), 0.0, 0
    for x, y in batches:
        x = normalise(x) if x.dtype == torch.uint8 else x
        loss = F.cross_entropy(fn(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
    return time.perf_counter() - start, loss_sum / max(1, n), n


def best_of(n: int, fn: object) -> float:
    """Fewest seconds per item over ``n`` runs of ``fn`` (which returns how many items it did)."""
    best = math.inf
    for _ in range(n):
        start = time.perf_counter()
        items = fn()
        best = min(best, (time.perf_counter() - start) / max(1, items))
    return best


def alternate(a: object, b: object, reps: int) -> tuple[float, float]:
    """Median seconds of ``a()`` and of ``b()``, run alternately after one warm-up each."""
    a()
    b()
    ta, tb = [], []
    for _ in range(reps):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def compute_bound(model: nn.Module, optimizer: torch.optim.Optimizer, prefix: int, images: torch.Tensor,
                  labels: torch.Tensor, reps: int) -> dict[str, float]:
    """Seconds per batch, full model vs head, on tensors in RAM: a training step, and a forward alone."""
    with torch.no_grad():
        feats = model.features[:prefix](images).half()
    head = head_from(model, prefix)
    full_step, head_step = alternate(lambda: run_epoch(model, [(images, labels)], optimizer),
                                     lambda: run_epoch(head, [(feats, labels)], optimizer), reps)
    with torch.no_grad():
        model.eval()
        full_fwd, head_fwd = alternate(lambda: model(images), lambda: head(feats), reps)
    return {"full_step": full_step, "head_step": head_step, "full_fwd": full_fwd, "head_fwd": head_fwd}


def macs(model: nn.Module, prefix: int) -> dict[str, float]:
    """Multiply-adds per image of the prefix, the head's forward and a training step's backward."""
    counts: dict[str, float] = {}

    def hook(name: str):
        def f(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            per_out = mod.weight[0].numel()  # in_channels/groups × kH × kW, or in_features
            counts[name] = out[0].numel() * per_out
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 256, 256))
    for h in handles:
        h.remove()
    cut = [n for n in counts if n.startswith("features.") and int(n.split(".")[1]) < prefix]
    trained = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
               and m.weight.requires_grad]
    backward = sum(counts[n] for n in trained) + sum(counts[n] for n in trained[1:])  # weight grads + input grads
    return {"prefix": sum(counts[n] for n in cut), "head": sum(v for n, v in counts.items() if n not in cut),
            "backward": backward}


def precision(model: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, prefix: int) -> dict:
    """First-step loss and gradients through an fp32 / fp16 / bf16 cache vs the uncached model."""
    def step(fn: nn.Module, inp: torch.Tensor) -> tuple[float, dict]:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(99)  # the same dropout masks
        loss = F.cross_entropy(fn(inp).float(), y)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss0, g0 = step(model, x)
    with torch.no_grad():
        feats = model.features[:prefix](x)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        loss, g = step(head, feats.to(dtype))
        out[name] = {"loss_rel": abs(loss - loss0) / loss0,
                     "grad_rel": max(((g[n] - g0[n]).norm() / g0[n].norm()).item() for n in g0),
                     "feature_rel": ((feats.to(dtype).float() - feats).norm() / feats.norm()).item()}
    model.zero_grad(set_to_none=True)
    return out


def fmt_h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="a build folder (default: build a tiny synthetic one in a temp folder)")
    p.add_argument("--dataset", default="ahsn")
    p.add_argument("--epochs", type=int, default=4, help="epochs per path (the first cached one builds the cache)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="per process (64: the paper's global 128 on this machine's 2 ranks)")
    p.add_argument("--paper-batch", type=int, default=128,
                   help="also time the compute bound at this batch (the paper's; 0: skip)")
    p.add_argument("--images", type=int, default=0, help="samples per epoch (0: every training image once)")
    p.add_argument("--workers", type=int, default=1, help="streaming loader workers (the trainer's num_workers)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each compute-bound timing")
    p.add_argument("--gpu-tflops", type=float, default=40.0,
                   help="ASSUMED sustained bf16 TFLOP/s of one GPU on AlexNet's layers (A100-class)")
    p.add_argument("--gpu-host-cores", type=int, default=8, help="ASSUMED CPU cores decoding PNGs for one GPU")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]  # other jobs on a shared machine slow everything: say how busy it was

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as t:
        tmp = Path(t)
        t0 = time.perf_counter()
        build = Path(args.shards) if args.shards else make_build(tmp / "build")
        if not args.shards:
            log(f"tiny synthetic build: {time.perf_counter() - t0:.1f} s")
        manifest = load_manifest(build)
        classes = manifest.classes(args.dataset)
        records = cache_records(manifest, args.dataset)  # every condition and fold: what a cache holds
        samples = args.images or sum(r.count for r in records)
        steps = steps_per_epoch(samples, args.batch_size, 1)
        weights = tmp / "alexnet.pth"  # a seeded random AlexNet standing in for ImageNet's
        torch.manual_seed(123)
        torch.save(build_model(1000).state_dict(), weights)
        over = [f"train.batch_size={args.batch_size}", f"train.num_workers={args.workers}"]

        # The two paths side by side, epoch by epoch (a load change on a shared machine hits both).
        # (a) streaming: decode + full forward (conv1–conv4 frozen), every epoch;
        # (b) cached: epoch 1 first builds the cache, then every epoch trains the head from it.
        model, optimizer, scheduler, train = paper_model(weights, len(classes), over)
        model_c, optimizer_c, scheduler_c, _ = paper_model(weights, len(classes), over)
        prefix = resolve_feature_cache("auto", train.freeze)
        assert prefix is not None, "the paper recipe freezes conv1–conv4"
        shards = shard_set(build, records)
        spec = cache_spec(tmp / "cache", manifest.fingerprint, model_c, prefix)
        head = head_from(model_c, prefix)
        stream, cached, build_stats, load_s = [], [], None, 0.0
        for epoch in range(args.epochs):
            loader = make_train_loader(shards, classes, args.batch_size, steps, seed=0, epoch=epoch,
                                       num_workers=args.workers, shuffle_buffer=train.shuffle_buffer)
            stream.append(run_epoch(model, loader, optimizer))
            scheduler.step()
            start = time.perf_counter()
            if epoch == 0:
                build_stats = build_feature_cache(build, records, model_c, torch.device("cpu"), spec, classes,
                                                  batch_size=64, num_workers=args.workers)
                t1 = time.perf_counter()
                data = load_feature_cache(spec, records)
                load_s = time.perf_counter() - t1
            seconds, loss, n = run_epoch(head, epoch_loader(data, args.batch_size, steps, seed=0, epoch=epoch),
                                         optimizer_c)
            scheduler_c.step()
            cached.append((time.perf_counter() - start, loss, n, seconds))
            log(f"epoch {epoch + 1}: streaming {stream[-1][0]:.1f} s (loss {stream[-1][1]:.3f}), "
                f"cached {cached[-1][0]:.1f} s (loss {loss:.3f})")

        # The compute bound: the same step on tensors already in RAM (no decoding, no gathering),
        # full and head alternating; at this run's batch and at the paper's.
        urls = [str(build / r.path) for r in records]
        bounds = {}
        for bs in dict.fromkeys([args.batch_size, *([args.paper_batch] if args.paper_batch else [])]):
            images, labels = [], []
            for x, y, _ in make_eval_loader(urls, bs, 0, classes=classes):
                images.append(x)
                labels.append(y)
                if sum(len(t) for t in labels) >= bs:
                    break
            images, labels = torch.cat(images)[:bs], torch.cat(labels)[:bs]
            bounds[bs] = compute_bound(model, optimizer, prefix, images, labels, args.reps)
        images, labels = images[:args.batch_size], labels[:args.batch_size]
        full_step, head_step = bounds[args.batch_size]["full_step"], bounds[args.batch_size]["head_step"]
        full_fwd, head_fwd = bounds[args.batch_size]["full_fwd"], bounds[args.batch_size]["head_fwd"]
        # Per-image costs outside the model, best of 3 (a load spike from other jobs only slows one pass):
        # serving an epoch's batches from the cache, and PNG decode + resize + normalise on one core.
        gather = best_of(3, lambda: sum(len(y) for _, y in epoch_loader(data, args.batch_size, steps, seed=0,
                                                                        epoch=99)))
        decode = best_of(3, lambda: sum(len(y) for _, y, _ in make_eval_loader(urls[:2], 32, 0,
                                                                               classes=classes)))
        prec = precision(model_c, head, images, labels, prefix)
        counts = macs(model_c, prefix)

    # ------------------------------------------------------------------ figures
    b = args.batch_size
    later = slice(1, None) if args.epochs > 1 else slice(0, None)
    stream_epoch = statistics.median(x[0] for x in stream[later])  # median: other jobs share the cores
    cached_epoch = statistics.median(c[3] for c in cached[later])
    ratio = stream_epoch / cached_epoch
    feat_bytes = build_stats.bytes / max(1, build_stats.samples)
    build_img = build_stats.seconds / max(1, build_stats.samples)
    full_step_fl = 2 * (counts["prefix"] + counts["head"] + counts["backward"])
    head_step_fl = 2 * (counts["head"] + counts["backward"])

    # The paper's protocol, summed over AHSN + AESN and 5 folds (fold k validates), 6 epochs.
    clean_train = PROTOCOL_IMAGES * TRAIN_FRACTION / CONDITIONS  # both datasets
    train_imgs = EPOCHS * (FOLDS - 1) * clean_train * (1 + CONDITIONS)  # exp 1 (clean) + exp 2 (4× the samples)
    val_imgs = EPOCHS * clean_train * (1 + CONDITIONS)
    cache_imgs = PROTOCOL_IMAGES * TRAIN_FRACTION  # every training image of both datasets, once

    def cpu_hours(stream_img: float, cached_img: float, full_fwd_img: float, head_fwd_img: float) -> tuple:
        streaming = train_imgs * stream_img + val_imgs * (decode + full_fwd_img)
        with_cache = cache_imgs * build_img + train_imgs * cached_img + val_imgs * head_fwd_img
        return streaming / 3600, with_cache / 3600

    cpu_run = cpu_hours(stream_epoch / (steps * b), cached_epoch / (steps * b), full_fwd / b, head_fwd / b)
    pb = args.paper_batch
    cpu_paper = (cpu_hours(bounds[pb]["full_step"] / pb + decode, bounds[pb]["head_step"] / pb,
                           bounds[pb]["full_fwd"] / pb, bounds[pb]["head_fwd"] / pb) if pb else None)
    flops = args.gpu_tflops * 1e12
    gpu_decode = decode / args.gpu_host_cores  # per image, the host's cores decoding in parallel
    gpu_stream = (train_imgs * max(full_step_fl / flops, gpu_decode)
                  + val_imgs * max(2 * (counts["prefix"] + counts["head"]) / flops, gpu_decode))
    gpu_cached = (cache_imgs * max(2 * counts["prefix"] / flops, gpu_decode)
                  + train_imgs * max(head_step_fl / flops, gather) + val_imgs * max(2 * counts["head"] / flops, gather))

    summary = {
        "machine": (f"{os.cpu_count()} CPU cores, {threads} torch threads, {args.workers} loader worker(s), "
                    f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"),
        "data": f"{len(records)} shards, {samples} images/epoch, batch {b}, {steps} steps/epoch, {args.epochs} epochs",
        "streaming_epoch_s": [round(x[0], 2) for x in stream],
        "cached_epoch_s": [round(c[0], 2) for c in cached],
        "cache_build_s": round(build_stats.seconds, 2), "cache_load_s": round(load_s, 3),
        "speedup_per_epoch_after_first": round(ratio, 2),
        "compute_bound": {bs: {"full_step_s": round(v["full_step"], 3), "head_step_s": round(v["head_step"], 3),
                               "ratio": round(v["full_step"] / v["head_step"], 2)} for bs, v in bounds.items()},
        "flop_ratio_full_over_head": round(full_step_fl / head_step_fl, 2),
        "gflop_per_image_step": {"full": round(full_step_fl / 1e9, 2), "head": round(head_step_fl / 1e9, 2)},
        "cached_epoch_over_head_compute": round(cached_epoch / (steps * head_step), 2),
        "streaming_epoch_over_full_compute": round(stream_epoch / (steps * full_step), 2),
        "decode_ms_per_image": round(decode * 1e3, 2), "build_ms_per_image": round(build_img * 1e3, 2),
        "cache_gather_ms_per_image": round(gather * 1e3, 3),
        "cache_kb_per_image": round(feat_bytes / 1e3, 1),
        "precision_vs_uncached": {k: {m: float(f"{x:.2e}") for m, x in v.items()} for k, v in prec.items()},
        "protocol": {"training_images": int(train_imgs), "validation_images": int(val_imgs),
                     "cached_images": int(cache_imgs), "cache_gb": round(cache_imgs * feat_bytes / 1e9, 1)},
        "projection_cpu_h_at_run_batch": [round(x, 1) for x in cpu_run],
        "projection_cpu_h_at_paper_batch": [round(x, 1) for x in cpu_paper] if cpu_paper else None,
        "projection_gpu_h_ESTIMATE": {"streaming": round(gpu_stream / 3600, 2), "cached": round(gpu_cached / 3600, 2),
                                      "assumed_tflops": args.gpu_tflops, "assumed_decode_cores": args.gpu_host_cores},
    }
    print(json.dumps(summary, indent=1))
    bound_lines = "\n".join(
        f"  batch {bs:<4}       full fwd+bwd+step {v['full_step'] * 1e3:6.0f} ms, head {v['head_step'] * 1e3:6.0f} ms "
        f"→ {v['full_step'] / v['head_step']:.2f}x" for bs, v in bounds.items())
    paper_line = (f"  {os.cpu_count()} CPU cores, batch {pb}: streaming {cpu_paper[0]:.1f} h, cached "
                  f"{cpu_paper[1]:.1f} h ({cpu_paper[0] / cpu_paper[1]:.2f}x; in-RAM compute at batch {pb} + decode)"
                  if cpu_paper else "")
    print(f"""
================ frozen-feature cache: summary ================
{summary['machine']}; {summary['data']}
epoch            {'  '.join(f'{i + 1:>7}' for i in range(args.epochs))}
streaming (s)    {'  '.join(f'{x[0]:7.2f}' for x in stream)}
cached (s)       {'  '.join(f'{c[0]:7.2f}' for c in cached)}   (epoch 1 includes the cache build)
cache build      {build_stats.seconds:.2f} s for {build_stats.samples} images ({build_img * 1e3:.1f} ms each: decode +
                 conv1–conv4), {feat_bytes / 1e3:.1f} KB/image fp16; opening it (mmap) {load_s * 1e3:.0f} ms
speed-up         {ratio:.2f}x per epoch after the first (streaming {stream_epoch:.2f} s, cached {cached_epoch:.2f} s)
compute bound    full model vs head, one training step on in-RAM tensors (median of {args.reps}):
{bound_lines}
                 FLOP ratio {full_step_fl / head_step_fl:.2f}x ({full_step_fl / 1e9:.2f} vs \
{head_step_fl / 1e9:.2f} GFLOP per image);
                 the optimiser step and fc weight gradients cost the same on both paths
                 and weigh more at small batches; PNG decode adds {decode * 1e3:.1f} ms/image to streaming only,
                 serving cached batches {gather * 1e3:.2f} ms/image to cached only
how close        cached epochs ran at {cached_epoch / (steps * head_step):.2f}x their pure head compute, streaming
                 epochs at {stream_epoch / (steps * full_step):.2f}x their pure full-model compute (batch {b})
fp16 vs bf16     first-step loss rel. error: fp16 {prec['fp16']['loss_rel']:.1e}, \
bf16 {prec['bf16']['loss_rel']:.1e}, fp32 {prec['fp32']['loss_rel']:.1e};
                 worst layer's grad rel. error: fp16 {prec['fp16']['grad_rel']:.1e}, \
bf16 {prec['bf16']['grad_rel']:.1e}, fp32 {prec['fp32']['grad_rel']:.1e};
                 feature rel. error: fp16 {prec['fp16']['feature_rel']:.1e}, bf16 {prec['bf16']['feature_rel']:.1e} \
→ the cache stores fp16
paper protocol   AHSN+AESN × 2 experiments × {FOLDS} folds × {EPOCHS} epochs, ~{PROTOCOL_IMAGES / 1e3:.1f}k images
                 (exp. 2: {CONDITIONS}× the clean samples): {train_imgs / 1e6:.2f} M training images,
                 {val_imgs / 1e3:.0f}k validation, {cache_imgs / 1e3:.1f}k cached once
                 ({cache_imgs * feat_bytes / 1e9:.1f} GB fp16 on disk, memory-mapped)
  {os.cpu_count()} CPU cores, batch {b}: streaming {cpu_run[0]:.1f} h, cached {cpu_run[1]:.1f} h \
({cpu_run[0] / cpu_run[1]:.2f}x; this run's per-image costs)
{paper_line}
  one GPU        streaming {fmt_h(gpu_stream)}, cached {fmt_h(gpu_cached)}: an ESTIMATE, not measured
                 (assumed {args.gpu_tflops:.0f} TFLOP/s sustained on AlexNet's layers; PNG decode on
                 {args.gpu_host_cores} host cores at this machine's per-core rate, {1 / gpu_decode:.0f} images/s,
                 vs {flops / full_step_fl:.0f} images/s of full-model steps: streaming is decode-bound;
                 cached: {flops / head_step_fl:.0f} images/s of head steps, batches served from the host's
                 page cache at {1 / gather:.0f} images/s; the {cache_imgs * feat_bytes / 1e9:.1f} GB would also fit \
on the GPU)
================================================================""")
    print(f"target ≥ 1.6x per epoch after the first: {'met' if ratio >= 1.6 else 'NOT met'} ({ratio:.2f}x)")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
