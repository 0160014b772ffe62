"""The same build on a local Ray and on a multi-node Ray cluster with the same total CPUs, in one
run: seconds for each, the cluster's overhead in seconds and per cent.

    .venv/bin/python benchmarks/bench_cluster.py                    # synthetic 'demo' corpus, 2 nodes vs 2 CPUs
    .venv/bin/python benchmarks/bench_cluster.py --nodes 3 --size tiny --rounds 1
    .venv/bin/python benchmarks/bench_cluster.py snr_db='[15]'      # any config override

The cluster is the tests' (``tests.cluster.raycluster``, root only): a head and NODES-1 worker
nodes, each started by ``ray start`` on a host of its own (a network namespace with its own
address), one CPU each, token authentication on; it starts once (timed apart) and is ended by PID
at the end; the cluster's builds run on the head's host. Each build runs in a process of its own, into an
empty folder: ``run_build`` of the same config as ``serwild build``, with ``ray.num_cpus=NODES`` (a
local Ray, started and stopped by the build) against ``ray.address=…`` (joining the running
cluster). Timed: the whole process, and inside it (an executor wrapper) Ray's start or join, the
tasks (scan + shards) and Ray's stop. The two take turns for ``--rounds`` rounds and the best of
each is reported, so a burst of load from other jobs hits both alike. Every build must give the
same shards (the manifest fingerprint).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.cluster.raycluster: the tests' cluster
from tests.cluster.raycluster import ray_cluster_on_hosts  # noqa: E402

RAY_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_TMPDIR",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def one_build(args: list[str], env: dict[str, str], out: Path, host: Any = None) -> dict:
    """A build of ``ARGS out=OUT`` in a process of its own (:func:`child`; on ``host``, a
    :class:`tests.cluster.raycluster.Host`, if given): its seconds, whole and by phase, the
    fingerprint and the shard tasks per node."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", *args, f"out={out}"]
    done = subprocess.run(host.cmd(*argv) if host else argv, capture_output=True, text=True, cwd=REPO, env=env,
                          check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    per_node = json.loads((out / "build-log.jsonl").read_text().splitlines()[-1])["shard_tasks_per_node"]
    return {"s": seconds, **json.loads(done.stdout.splitlines()[-1]), "fingerprint": manifest["fingerprint"],
            "samples": manifest["totals"]["samples"], "shards": manifest["totals"]["shards"], "per_node": per_node}


def child(overrides: list[str]) -> int:
    """One build, in this process: ``run_build`` through an executor that times its phases; prints them."""
    from serwild.builder.build import run_build
    from serwild.config import load_config
    from serwild.processes import executors

    class Timed(executors.Executor):
        def __init__(self, inner: executors.Executor) -> None:
            self.inner, self.times = inner, {"ray_s": 0.0, "tasks_s": 0.0}

        def __enter__(self) -> Timed:
            t0 = time.perf_counter()
            self.inner.__enter__()
            self.times["ray_s"] += time.perf_counter() - t0
            return self

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            t0 = time.perf_counter()
            self.inner.__exit__(exc_type, exc, tb)
            self.times["ray_s"] += time.perf_counter() - t0

        def map(self, fn: Callable[..., Any], items: Sequence[tuple], desc: str,
                describe: executors.Describe | None = None) -> Iterator[executors.Finished]:
            t0 = time.perf_counter()
            yield from self.inner.map(fn, items, desc, describe)
            self.times["tasks_s"] += time.perf_counter() - t0

    cfg = load_config(None, overrides)
    timed = Timed(executors.open_executor("ray", cfg.ray, Path(cfg.out)))
    run_build(cfg, executor=timed)
    print(json.dumps(timed.times))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2, help="cluster nodes (one CPU each) = local CPUs (default 2)")
    ap.add_argument("--size", default="demo", choices=["tiny", "demo"], help="synthetic corpus size")
    ap.add_argument("--rounds", type=int, default=2, help="local and cluster builds, taking turns (default 2)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `serwild build`")
    args = ap.parse_args(argv)

    from serwild.synth.corpus import write_synthetic_corpus

    # Short folders: Ray's socket paths under them must fit in 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="swbench", dir="/tmp"))
    try:
        write_synthetic_corpus(tmp / "corpus", size=args.size, progress=False)
        common = ["corpus.kind=iemocap", f"corpus.root={tmp / 'corpus'}", f"noise.dir={tmp / 'corpus' / 'noise'}",
                  *args.overrides]
        t0 = time.perf_counter()
        with ray_cluster_on_hosts(args.nodes - 1, Path(tempfile.mkdtemp(prefix="swray", dir="/tmp"))) as cluster:
            start_s = time.perf_counter() - t0
            load = [os.getloadavg()[0]]
            cluster_env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster.token_path))
            runs: dict[str, list[dict]] = {"local": [], "cluster": []}
            for _ in range(args.rounds):
                runs["local"].append(one_build([*common, f"ray.num_cpus={args.nodes}"], clean_env(), tmp / "local"))
                runs["cluster"].append(one_build([*common, f"ray.address={cluster.address}"], cluster_env,
                                                 tmp / "cluster", cluster.head))
            load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, runs, start_s, load)
    return 0 if len({r["fingerprint"] for rs in runs.values() for r in rs}) == 1 else 1


def report(args: argparse.Namespace, runs: dict[str, list[dict]], start_s: float, load: list[float]) -> None:
    local, cluster = (min(runs[k], key=lambda r: r["s"]) for k in ("local", "cluster"))
    print(f"\n'{args.size}' synthetic corpus: {local['shards']} shards, {local['samples']} samples; "
          f"{os.cpu_count()} CPUs here; overrides: {' '.join(args.overrides) or '-'}")
    print(f"cluster: {args.nodes} nodes x 1 CPU, a host each, started in {start_s:.1f} s (not counted below)")
    print(f"{'':10s}{'whole s':>9s}{'Ray start/join + stop s':>25s}{'tasks s':>9s}   (best of {args.rounds}; all runs)")
    for name, best in (("local", local), ("cluster", cluster)):
        every = ", ".join(f"{r['s']:.1f}" for r in runs[name])
        print(f"{name:10s}{best['s']:9.1f}{best['ray_s']:25.1f}{best['tasks_s']:9.1f}   ({every})")
    print(f"cluster shard tasks per node (best run): {cluster['per_node']}")
    for what, key in (("whole build", "s"), ("tasks (scan + shards)", "tasks_s")):
        over = cluster[key] - local[key]
        print(f"overhead of the cluster, {what}: {over:+.1f} s ({100 * over / local[key]:+.1f} %)")
    same = len({r["fingerprint"] for rs in runs.values() for r in rs}) == 1
    print(f"identical shards in every build: {'yes' if same else 'NO'} (fingerprint {local['fingerprint'][:12]}…)")
    print(f"load average (1 min) before → after: {load[0]:.2f} → {load[-1]:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
