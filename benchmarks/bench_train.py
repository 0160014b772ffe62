"""Training throughput: images per second for 1, 2, … DDP processes, and the input ceiling.

    python benchmarks/bench_train.py --shards shards/demo [--nprocs 1 2] [--steps 8] [--batch-size 32]
    python benchmarks/bench_train.py --shards shards/demo --device cuda --nprocs 1 --batch-size 128 --workers 6

For every process count, runs the real trainer (``torchrun … -m serwild.trainer``) for two
short epochs of ``--steps`` steps, no validation, and reads images/s of the second epoch
from metrics.jsonl (the first includes start-up). The global batch stays ``--batch-size``,
so more processes mean smaller per-rank batches, as in a real run. Then times the training
input pipeline alone (same workers, per-rank batch) to say whether the model or the input
is the bottleneck. ``--recipe paper`` fine-tunes from a random "pretrained" file (conv1–4
frozen: what a real fine-tuning step costs); ``scratch`` trains every layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_rate(args: argparse.Namespace, nproc: int, tmp: Path, weights: Path | None) -> dict:
    run_dir = tmp / "runs"
    over = {"out": args.shards, "train.dataset": args.dataset, "train.run_dir": run_dir,
            "train.name": f"bench-{nproc}", "train.epochs": 2, "train.batch_size": args.batch_size,
            "train.samples_per_epoch": args.steps * args.batch_size, "train.num_workers": args.workers,
            "train.device": args.device, "train.verify": "size", "cv.fold": "null",
            "train.pretrained": weights if weights else "none"}
    cfg = tmp / "bench.yaml"
    cfg.write_text("seed: 0\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "serwild.trainer", "--config", str(cfg), "--overwrite", *[f"{k}={v}" for k, v in over.items()]]
    threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 4
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"training with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (run_dir / f"bench-{nproc}" / "metrics.jsonl").read_text().splitlines()]
    return {"nproc": nproc, "threads": threads, "images_per_s": lines[-1]["images_per_s"],
            "step_s": lines[-1]["seconds"] / args.steps, "wall_s": time.perf_counter() - start}


def loader_rate(args: argparse.Namespace, batch: int) -> float:
    """Images/s of the training input pipeline alone (this process + ``--workers`` workers)."""
    from serwild.data.loaders import make_train_loader, shard_set
    from serwild.data.manifest import load_manifest

    manifest = load_manifest(args.shards)
    shards = shard_set(args.shards, manifest.select(args.dataset, "train", ["clean"]))
    classes = manifest.classes(args.dataset)
    n_batches = max(4, 2 * args.steps)
    start, n = time.perf_counter(), 0
    for images, _ in make_train_loader(shards, classes, batch, n_batches, seed=0, epoch=0, num_workers=args.workers,
                                       as_uint8=args.device == "cuda"):
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="a build folder (manifest.json)")
    p.add_argument("--dataset", default="ahsn")
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=8, help="steps per epoch (2 epochs; the 2nd is timed)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--recipe", choices=["paper", "scratch"], default="paper")
    args = p.parse_args(argv)

    import torch

    from serwild.trainer.model import build_model

    with tempfile.TemporaryDirectory(prefix="bench_train_") as t:
        tmp = Path(t)
        weights = None
        if args.recipe == "paper":  # any AlexNet file will do: speed does not depend on the values
            weights = tmp / "alexnet.pth"
            torch.save(build_model(1000).state_dict(), weights)
        rows = [train_rate(args, n, tmp, weights) for n in args.nprocs]
    base = rows[0]["images_per_s"]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"AlexNet, {args.recipe} recipe, global batch {args.batch_size}, {args.steps} timed steps, "
          f"{args.workers} loader worker(s) per process, {device}")
    print(f"{'processes':>9}{'threads':>9}{'images/s':>10}{'s/step':>8}{'speed-up':>10}")
    for r in rows:
        print(f"{r['nproc']:>9}{r['threads']:>9}{r['images_per_s']:>10.1f}{r['step_s']:>8.2f}"
              f"{r['images_per_s'] / base:>9.2f}x")
    batch = args.batch_size // args.nprocs[-1]
    feed = loader_rate(args, batch)
    last = rows[-1]["images_per_s"] / rows[-1]["nproc"]
    verdict = "the input pipeline" if feed < 1.5 * last else "the model (compute)"
    print(f"input pipeline alone: {feed:.0f} images/s per process ({args.workers} worker(s), batch {batch}) "
          f"vs {last:.0f} trained per process → bottleneck: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
