"""The training loader's cost of exact epochs: images/s of serwild's exact-epoch loader vs
the resampling webdataset pipeline it replaced, in one run, on the same shards.

    python benchmarks/bench_epochs.py                       # a small synthetic build in a temp folder
    python benchmarks/bench_epochs.py --shards shards/demo --workers 0 2 --rounds 3

The baseline is the previous loader: ``wds.ResampledShards`` (shards drawn with
replacement), webdataset's shuffle, the same decode stage, ``with_epoch``. The exact loader
plans each rank's span of the epoch, and every DataLoader worker reads its rank's whole
stream (raw bytes) and decodes only its own batches, so that the order does not depend on
the worker count: that extra reading is what this measures. Both paths take turns inside
each round (a burst of load hits both alike); the best round of each is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def baseline_loader(shards, classes, batch: int, num_batches: int, workers: int):
    """The resampling pipeline serwild trained with before exact epochs."""
    from itertools import islice

    import webdataset as wds

    from serwild.data.loaders import _Decode, _WorkerInit, collate_train, read_shards

    per_worker = math.ceil(num_batches / max(1, workers))
    pipeline = wds.DataPipeline(
        wds.ResampledShards(shards.urls, seed=0, deterministic=True),
        wds.pipelinefilter(read_shards)(dict(zip(shards.urls, shards.counts))),
        wds.shuffle(1000, initial=100, seed=0),
        wds.map(_Decode(classes, False)),
        wds.batched(batch, collation_fn=collate_train, partial=False),
    ).with_epoch(per_worker)
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers,
                           prefetch_factor=2 if workers else None, worker_init_fn=_WorkerInit())
    return islice(iter(loader), num_batches)


def rate(make) -> float:
    start, n = time.perf_counter(), 0
    for images, _ in make():
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def small_build(root: Path) -> Path:
    from serwild.builder.build import run_build
    from serwild.config import load_config
    from serwild.synth.corpus import write_synthetic_corpus

    write_synthetic_corpus(root / "corpus", size="tiny", seed=0)
    cfg = load_config(None, [f"corpus.root={root / 'corpus'}", f"noise.dir={root / 'corpus' / 'noise'}",
                             "corpus.kind=synthetic", f"out={root / 'shards'}", "datasets=[ahsn]",
                             "snr_db=[15, 20, 40]", "shard.max_samples=64"])
    return run_build(cfg, executor="serial")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="a build folder (default: a small synthetic build in a temp folder)")
    p.add_argument("--dataset", default="ahsn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from serwild.data.loaders import make_train_loader, shard_set
    from serwild.data.manifest import load_manifest

    with tempfile.TemporaryDirectory(prefix="bench_epochs_") as t:
        build = Path(args.shards) if args.shards else small_build(Path(t))
        manifest = load_manifest(build)
        shards = shard_set(build, manifest.select(args.dataset, "train"))
        k = manifest.classes(args.dataset)
        steps = max(4, shards.samples // args.batch_size)
        print(f"{shards.samples} training samples in {len(shards.urls)} shards, batch {args.batch_size}, "
              f"{steps} batches per pass, best of {args.rounds} rounds, {os.cpu_count()} CPU cores")
        print(f"{'workers':>8}{'resampled img/s':>17}{'exact img/s':>13}{'exact/resampled':>17}")
        for w in args.workers:
            best = {"resampled": 0.0, "exact": 0.0}
            for _ in range(args.rounds):
                best["resampled"] = max(best["resampled"], rate(lambda w=w: baseline_loader(
                    shards, k, args.batch_size, steps, w)))
                best["exact"] = max(best["exact"], rate(lambda w=w: make_train_loader(
                    shards, k, args.batch_size, steps, seed=0, epoch=0, num_workers=w)))
            print(f"{w:>8}{best['resampled']:>17.0f}{best['exact']:>13.0f}"
                  f"{best['exact'] / best['resampled']:>16.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
