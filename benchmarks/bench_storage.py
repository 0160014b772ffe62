"""Loader throughput by where a build lives: local disk vs HTTP vs S3, all on loopback, one run.

    python benchmarks/bench_storage.py --shards shards/demo [--dataset ahsn] [--repeats 2]

Serves the build over HTTP (tests/data/server.py) and publishes it to a loopback S3 server
(moto, tests/data/s3server.py: needs the dev extra), then times ``open_build(...).loader``
over every test shard of ``--dataset`` (uint8 images, the GPU path; ``num_workers=0``: one
core) from each location; the best of ``--repeats`` counts. Loopback measures the
transport's own cost (requests, copies, hashing none), not a real network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.data.* servers


def images_per_s(location: str, dataset: str, opts: object, repeats: int) -> float:
    from serwild.data import open_build

    build = open_build(location, opts)
    best = 0.0
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        for images, _, _ in build.loader(dataset, "test", batch_size=32, as_uint8=True):
            n += len(images)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--dataset", default="ahsn")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from serwild.data.publish import publish
    from serwild.data.remote import RemoteOptions
    from tests.data.s3server import LoopbackS3, s3_env
    from tests.data.server import LoopbackServer

    with tempfile.TemporaryDirectory() as tmp, LoopbackServer(args.shards, max_lifetime_s=1800) as http, \
            LoopbackS3(max_lifetime_s=1800) as s3:
        os.environ.update(s3_env(s3.endpoint, tmp))
        opts = RemoteOptions(endpoint_url=s3.endpoint)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=s3.endpoint).mkdir("bench")
        publish(args.shards, "s3://bench/build", opts, say=lambda _: None)
        rows = [(name, images_per_s(loc, args.dataset, opts, args.repeats))
                for name, loc in (("local", args.shards), ("http", http.url()), ("s3", "s3://bench/build"))]
    print(f"{'location':<8} {'images/s':>9} {'vs local':>9}")
    for name, rate in rows:
        print(f"{name:<8} {rate:9.1f} {rate / rows[0][1]:8.2f}x")


if __name__ == "__main__":
    main()
