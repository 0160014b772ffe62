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


# ----------------------------------------------------------------------------- where the time goes


def per_image_costs(corpus: Path, noise: Path, kind: str, overrides: list[str], n: int) -> dict[str, float]:
    """Seconds per image of each step a shard task runs, measured in this process on the
    build's own first ``n`` noisy samples: audio read, mix, the floor (STFT + palette-PNG
    encode, with the peak normalisation), JSON + tar member, sha256 and fsync of the shard;
    the paper's tooling (librosa + a new matplotlib figure + savefig) on the same blocks; and
    the driver's serial scan and plan for the whole corpus."""
    import hashlib
    import importlib.util
    import io
    import tarfile

    from serwild.builder import audio, augment, plan, scan
    from serwild.builder.corpus import read_corpus
    from serwild.builder.render import Renderer
    from serwild.builder.shards import _noise, write_sample
    from serwild.config import load_config

    spec = importlib.util.spec_from_file_location("bench_render", REPO / "benchmarks" / "bench_render.py")
    bench_render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_render)
    cfg = load_config(None, [f"corpus.kind={kind}", f"corpus.root={corpus}", f"noise.dir={noise}", *overrides])
    t0 = time.perf_counter()
    utts, _ = read_corpus(cfg.corpus, cfg.datasets)
    noises, _ = scan.scan_noise(Path(cfg.noise.dir), cfg.audio, cfg.noise.test_fraction)
    scanned, _ = scan.scan_chunk(utts, cfg.audio)
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    specs = plan.plan_shards(sorted(scanned, key=lambda s: s.utt.id), noises, cfg)
    t_plan = time.perf_counter() - t0
    samples = [s for sp in specs for s in sp.samples if s.snr_db is not None][:n]
    renderer = Renderer(cfg.audio)
    for path in {s.noise_path for s in samples}:  # each worker decodes a noise file once: not per image
        _noise(path, cfg.audio.sample_rate)
    clock = {k: 0.0 for k in ("read", "mix", "floor", "tar", "paper")}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for i, s in enumerate(samples):
            a = time.perf_counter()
            y = renderer.block(s.path, s.block, s.native_sr)
            b = time.perf_counter()
            seg = _noise(s.noise_path, cfg.audio.sample_rate)[s.noise_offset:s.noise_offset + len(y)]
            y, _ = augment.mix_at_snr(y, audio.fix_length(seg, len(y)), s.snr_db)
            c = time.perf_counter()
            png = renderer.png(y)
            d = time.perf_counter()
            write_sample(tar, s.key, {"json": b"{}" * 200, "png": png})
            e = time.perf_counter()
            clock["read"] += b - a
            clock["mix"] += c - b
            clock["floor"] += d - c
            clock["tar"] += e - d
            if i < max(1, n // 6):  # the paper's path is ~25× slower: a sixth of the blocks is plenty
                f = time.perf_counter()
                bench_render.paper(augment.peak_normalise(y))
                clock["paper"] += (time.perf_counter() - f) * (n / max(1, n // 6))
    data = buf.getvalue()
    with tempfile.NamedTemporaryFile() as tmp:
        a = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        b = time.perf_counter()
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
        c = time.perf_counter()
    per = {k: v / len(samples) for k, v in clock.items()}
    per["sha256"] = (b - a) / len(samples)
    per["write+fsync"] = (c - b) / len(samples)
    n_all = sum(len(sp.samples) for sp in specs)
    per["scan (driver, serial)"] = t_scan / n_all
    per["plan (driver)"] = t_plan / n_all
    per["_samples"] = float(len(samples))
    return per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray CPU counts to run (default 1 2)")
    ap.add_argument("--size", default="demo", choices=["tiny", "demo", "full"], help="synthetic corpus size")
    ap.add_argument("--corpus", type=Path, help="an existing IEMOCAP-layout root with noise/ inside (skip synthesis)")
    ap.add_argument("--breakdown", type=int, default=300, metavar="N",
                    help="also time each step on N samples, the floor and the paper's tooling (0: skip)")
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
        costs = per_image_costs(corpus, noise, kind, args.overrides, args.breakdown) if args.breakdown else None

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
    if costs:
        print_costs(costs, results)
    return 0 if same else 1


def print_costs(costs: dict[str, float], results: list[dict]) -> None:
    """Per core: the whole build vs the floor vs the paper's tooling, and where the rest goes."""
    best = max(results, key=lambda r: r["samples"] / r["build_s"] / r["workers"])
    whole = best["build_s"] * best["workers"] / best["samples"]  # core-seconds per image, all included
    floor, paper = costs["floor"], costs["paper"]
    print(f"\nper core ({best['workers']} worker(s)), same run, {costs['_samples']:.0f} noisy samples timed:")
    print(f"  whole build  {1 / whole:8.1f} spectrograms/s/core  ({whole * 1e3:6.2f} ms each)")
    print(f"  floor        {1 / floor:8.1f} /s/core  ({floor * 1e3:6.2f} ms: peak-normalise, STFT, dB, palette PNG)")
    print(f"  paper        {1 / paper:8.1f} /s/core  ({paper * 1e3:6.2f} ms: librosa + new figure + savefig)")
    print(f"  whole build vs paper: {paper / whole:.1f}×   floor vs paper: {paper / floor:.1f}×   "
          f"whole build / floor: {whole / floor:.2f}")
    steps = {k: v for k, v in costs.items() if k not in ("floor", "paper", "_samples")}
    rest = whole - floor - sum(steps.values())
    print("  between the floor and the whole build, per image:")
    for k, v in steps.items():
        print(f"    {k:22s} {v * 1e3:6.3f} ms")
    print(f"    {'Ray, scheduling, rest':22s} {rest * 1e3:6.3f} ms  (the remainder)")


if __name__ == "__main__":
    raise SystemExit(main())
