"""Loader throughput by where a build lives: local disk vs HTTP vs S3, all on loopback, one run.

    python benchmarks/bench_storage.py --shards shards/demo [--dataset ahsn] [--repeats 2]

Serves the build over HTTP (tests/data/server.py) and publishes it to a loopback S3 server
(moto, tests/data/s3server.py: needs the dev extra), then times ``open_build(...).loader``
over every test shard of ``--dataset`` (uint8 images, the GPU path; ``num_workers=0``: one
core) from each location, each remote one with an empty shard cache of its own: the first
epoch fetches every shard whole (cold), the next ones read the cached copies (warm, the best
of ``--repeats``). Loopback measures the transport's own cost, not a real network.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.data.* servers


def images_per_s(location: str, dataset: str, opts: object, repeats: int) -> tuple[float, float]:
    """(first epoch, best later epoch) images/s of the test loader from ``location``."""
    from serwild.data import open_build

    build = open_build(location, opts)
    rates = []
    for _ in range(1 + max(1, repeats)):
        t0, n = time.perf_counter(), 0
        for images, _, _ in build.loader(dataset, "test", batch_size=32, as_uint8=True):
            n += len(images)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], max(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--dataset", default="ahsn")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from serwild.data.fetch import RemoteOptions
    from serwild.data.publish import publish
    from tests.data.s3server import LoopbackS3, s3_env
    from tests.data.server import LoopbackServer

    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(args.shards, max_lifetime_s=1800) as http, \
            LoopbackS3(max_lifetime_s=1800) as s3:
        os.environ.update(s3_env(s3.endpoint, tmp))
        opts = RemoteOptions(endpoint_url=s3.endpoint, cache_dir=f"{tmp}/cache-publish")  # its check fetches back
        import s3fs

        s3fs.S3FileSystem(endpoint_url=s3.endpoint).mkdir("bench")
        publish(args.shards, "s3://bench/build", opts, say=lambda _: None)
        rows = [(name, images_per_s(loc, args.dataset, dataclasses.replace(opts, cache_dir=f"{tmp}/cache-{name}"),
                                    args.repeats))
                for name, loc in (("local", args.shards), ("http", http.url()), ("s3", "s3://bench/build"))]
    base = rows[0][1][1]
    print(f"{'location':<8} {'1st epoch img/s':>16} {'later img/s':>12} {'later vs local':>15}")
    for name, (cold, warm) in rows:
        print(f"{name:<8} {cold:16.1f} {warm:12.1f} {warm / base:14.2f}x")


if __name__ == "__main__":
    main()
