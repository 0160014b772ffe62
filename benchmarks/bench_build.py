"""The whole build under Ray at 1 and 2 workers on one synthetic corpus: wall time, samples/s,
speed-up, and the peak memory of each Ray worker.

    .venv/bin/python benchmarks/bench_build.py                       # synthetic 'demo' corpus, 1 and 2 CPUs
    .venv/bin/python benchmarks/bench_build.py --workers 1 2 4 --size tiny
    .venv/bin/python benchmarks/bench_build.py --corpus corpora/synth    # an existing IEMOCAP-layout tree + noise/
    .venv/bin/python benchmarks/bench_build.py snr_db='[15]'          # any config override

For each worker count: a fresh local Ray (``ray.init(num_cpus=N)``, timed on its own), then
``run_build(cfg, executor="ray")`` into an empty folder (timed: scan + plan + every shard +
manifest; Ray start-up excluded and reported apart), then ``ray.shutdown()``. Builds at
different worker counts must agree byte for byte (the manifest fingerprint is compared).

Peak memory per worker: a thread polls ``/proc`` every 0.2 s for the Ray worker processes
that descend from this driver (``ray::IDLE``, ``ray::build_shard`` …; not the raylet or
Ray's agents, nor other people's Ray clusters on the machine) and records each one's ``VmHWM``, the kernel's
own high-water mark of its resident set, so no peak between polls is missed. RSS counts
shared library pages too (numpy, librosa, Ray's core), so it overstates what each worker
adds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- corpus


def make_corpus(folder: Path, size: str) -> tuple[Path, Path, str, str]:
    """(corpus root, noise dir, corpus.kind, description) of a fresh built-in synthetic corpus."""
    from serwild.synth.corpus import write_synthetic_corpus

    write_synthetic_corpus(folder, size=size, progress=False)
    return folder, folder / "noise", "iemocap", f"synthetic corpus, size '{size}'"


# ----------------------------------------------------------------------------- worker memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the name in (…) may hold spaces
        kids.setdefault(ppid, []).append(int(d))
    return kids


def ray_workers(root: int) -> dict[int, str]:
    """pid → process title of the Ray *worker* processes descending from ``root`` (tasks run
    there; the raylet, GCS and the dashboard/runtime-env agents are left out)."""
    kids, out, stack = _children(), {}, [root]
    while stack:
        for pid in kids.get(stack.pop(), []):
            stack.append(pid)
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            titled = argv[0].startswith("ray::") and not argv[0].endswith("Agent")  # ray::IDLE, ray::build_shard
            starting = len(argv) > 1 and argv[1].endswith("default_worker.py")  # before it sets its title
            if titled or starting:
                out[pid] = argv[0]
    return out


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class PeakSampler(threading.Thread):
    """Polls the driver's Ray workers and keeps each one's largest VmHWM seen."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.peaks, self.names = period, {}, {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.period)

    def sample(self) -> None:
        for pid, cmd in ray_workers(os.getpid()).items():
            mb = vm_hwm_mb(pid)
            if mb is not None:
                self.peaks[pid] = max(mb, self.peaks.get(pid, 0.0))
                if not cmd.startswith("ray::IDLE"):
                    self.names[pid] = cmd.split()[0]

    def stop(self) -> dict[int, float]:
        self.sample()  # the last word, before the workers go away
        self._stop_event.set()
        self.join()
        return self.peaks


# ----------------------------------------------------------------------------- one build


def one_build(workers: int, corpus: Path, noise: Path, kind: str, out: Path, overrides: list[str]) -> dict:
    import ray

    from serwild.builder.build import run_build
    from serwild.config import load_config

    cfg = load_config(None, [f"corpus.kind={kind}", f"corpus.root={corpus}", f"noise.dir={noise}",
                             f"out={out}", f"ray.num_cpus={workers}", *overrides])
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
    t_start = time.perf_counter() - t0
    sampler = PeakSampler()
    sampler.start()
    try:
        t1 = time.perf_counter()
        run_build(cfg, executor="ray")  # sees the running Ray and uses it (does not shut it down)
        t_build = time.perf_counter() - t1
        peaks = sampler.stop()
    finally:
        ray.shutdown()
    manifest = json.loads((out / "manifest.json").read_text())
    used = {pid: mb for pid, mb in peaks.items() if pid in sampler.names}  # ran at least one task
    return {"workers": workers, "ray_start_s": t_start, "build_s": t_build,
            "samples": manifest["totals"]["samples"], "shards": manifest["totals"]["shards"],
            "fingerprint": manifest["fingerprint"], "peaks_mb": sorted(used.values() or peaks.values()),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray CPU counts to run (default 1 2)")
    ap.add_argument("--size", default="demo", choices=["tiny", "demo", "full"], help="synthetic corpus size")
    ap.add_argument("--corpus", type=Path, help="an existing IEMOCAP-layout root with noise/ inside (skip synthesis)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `serwild build`")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        if args.corpus:
            corpus, noise, kind, what = args.corpus, args.corpus / "noise", "iemocap", str(args.corpus)
        else:
            t0 = time.perf_counter()
            corpus, noise, kind, what = make_corpus(Path(tmp) / "data", args.size)
            print(f"corpus: {what} (written in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        results = [one_build(n, corpus, noise, kind, Path(tmp) / f"shards-{n}", args.overrides)
                   for n in args.workers]

    print(f"\nwhole build, {what}; {os.cpu_count()} CPUs; overrides: {' '.join(args.overrides) or '-'}")
    print(f"{'workers':>7}{'ray start s':>12}{'build s':>9}{'samples':>9}{'shards':>7}{'samples/s':>11}"
          f"{'speed-up':>9}{'incl. start':>12}{'peak RSS/worker MB':>22}{'load 1-min':>14}")
    base = results[0]
    for r in results:
        peaks = ", ".join(f"{p:.0f}" for p in r["peaks_mb"]) or "?"
        total, base_total = r["build_s"] + r["ray_start_s"], base["build_s"] + base["ray_start_s"]
        print(f"{r['workers']:>7}{r['ray_start_s']:>12.1f}{r['build_s']:>9.1f}{r['samples']:>9}{r['shards']:>7}"
              f"{r['samples'] / r['build_s']:>11.1f}{base['build_s'] / r['build_s']:>8.2f}×"
              f"{base_total / total:>11.2f}×{peaks:>22}{r['load_before']:>7.2f}→{r['load_after']:.2f}")
    same = len({r["fingerprint"] for r in results}) == 1
    print(f"identical shards at every worker count: {'yes' if same else 'NO'} "
          f"(fingerprint {base['fingerprint'][:12]}…)")
    print("targets: speed-up ≥ 1.6× from 1 to 2 workers on 2 cores; peak RSS < 500 MB per worker")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
