"""``serwild build``: corpus → clean and noisy jet spectrograms in WebDataset shards, with Ray.

    serwild build --config configs/demo.yaml
    serwild build --config configs/iemocap.yaml corpus.root=/data/IEMOCAP ray.num_cpus=16
    serwild build --config configs/iemocap.yaml ray.address=auto      # join a running Ray cluster

Stages: read the corpus → scan audio (Ray tasks) → plan every sample (driver, seeded) →
build shards (one Ray task per shard, progress bar) → manifest.json, rejects.jsonl,
DATASET.md. Running the same command again resumes: shards already built from the same
plan and still matching their sha256 are kept, the rest are rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from serwild.atomic import atomic_write
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject, read_corpus
from serwild.config import Config, load_config
from serwild.errors import UsageError

LOG = "build-log.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from serwild.cli import add_config_arguments

    add_config_arguments(p)
    p.add_argument("--serial", action="store_true",
                   help="run every task in this process, without Ray (debugging, tiny corpora)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = run_build(cfg, executor="serial" if args.serial else "ray")
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"built {len(manifest['shards'])} shards, {manifest['totals']['samples']} samples, "
          f"{manifest['totals']['rejects']} rejects → {out}")
    for reason, n in reject_summary(out / "rejects.jsonl").most_common():
        print(f"  {n:6d} × {reason}")
    return 0


DETAIL = re.compile(r"'[^']*'|\(.*\)")  # a quoted label code or a parenthesised detail


def reject_summary(path: Path) -> Counter[str]:
    """Rejects grouped by reason, with the per-item details (label code, duration) cut out."""
    reasons: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        reasons[r["stage"] + ": " + DETAIL.sub("…", r["reason"])] += 1
    return reasons


def run_build(cfg: Config, executor: str = "ray") -> Path:
    """Build (or resume) the shards described by ``cfg``; returns the build folder."""
    from serwild.builder import card, plan, scan
    from serwild.builder.manifest import write_json_atomic

    out = Path(cfg.out)
    _ensure_corpus(cfg)
    utts, rejects = read_corpus(cfg.corpus, cfg.datasets)
    if not utts:
        raise UsageError(f"corpus.root {cfg.corpus.root}: no usable utterance "
                         f"({len(rejects)} rejected; first: {rejects[0].reason if rejects else '-'})")
    noises, noise_rejects = ([], [])
    if cfg.snr_db:
        noises, noise_rejects = scan.scan_noise(Path(cfg.noise.dir), cfg.audio, cfg.noise.test_fraction)
    rejects += noise_rejects
    with _executor(executor, cfg) as pmap:
        scanned = []
        chunks = [utts[i:i + 32] for i in range(0, len(utts), 32)]
        for ok, bad in pmap(scan.scan_chunk, [(c, cfg.audio) for c in chunks], "scan audio"):
            scanned.extend(ok)
            rejects.extend(bad)
        scanned.sort(key=lambda s: s.utt.id)
        specs = plan.plan_shards(scanned, noises, cfg)
        out.mkdir(parents=True, exist_ok=True)
        done, todo = _resume_state(out, specs, cfg.audio)
        _remove_strays(out, {s.path for s in specs})
        if done:
            print(f"resume: {len(done)} shard(s) already built and verified, {len(todo)} to build",
                  file=sys.stderr)
        from serwild.builder.shards import build_shard

        with open(out / LOG, "a") as log:
            for stats in pmap(build_shard, [(s, str(out), cfg.audio) for s in todo], "build shards"):
                done[stats.path] = asdict(stats)
                log.write(json.dumps(done[stats.path], sort_keys=True) + "\n")
                log.flush()
                os.fsync(log.fileno())
    records = [done[s.path] for s in specs]
    for r in records:
        rejects.extend(Reject(**x) for x in r.pop("rejects", []))
    rejects.sort(key=lambda r: (r.stage, r.item, r.block if r.block is not None else -1, r.reason))
    with atomic_write(out / "rejects.jsonl", "w") as f:
        f.writelines(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in rejects)
    manifest = card.make_manifest(cfg, records, rejects, scanned)
    write_json_atomic(out / "manifest.json", manifest)
    (out / "DATASET.md").write_text(card.dataset_card(manifest))
    return out


def _ensure_corpus(cfg: Config) -> None:
    root = Path(cfg.corpus.root)
    if cfg.corpus.kind == "synthetic" and not root.exists():
        from serwild.builder.synth import write_synthetic_corpus

        print(f"corpus.root {root} does not exist: synthesising the '{cfg.corpus.synth_size}' corpus there",
              file=sys.stderr)
        write_synthetic_corpus(root, size=cfg.corpus.synth_size, seed=cfg.seed)


def _resume_state(out: Path, specs: list, audio_cfg: AudioConfig) -> tuple[dict[str, dict], list]:
    """Shards from an earlier run of the same plan whose files still match; the rest to build."""
    from serwild.builder.shards import sha256_file

    logged: dict[str, dict] = {}
    if (out / LOG).is_file():
        for line in (out / LOG).read_text().splitlines():
            try:
                rec = json.loads(line)
                logged[rec["path"]] = rec
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: that shard is simply rebuilt
    render = asdict(audio_cfg)
    done, todo = {}, []
    for spec in specs:
        rec = logged.get(spec.path)
        f = out / spec.path
        if (rec and rec.get("digest") == spec.digest(render) and f.is_file()
                and f.stat().st_size == rec["bytes"] and sha256_file(f) == rec["sha256"]):
            done[spec.path] = rec
        else:
            todo.append(spec)
    return done, todo


def _remove_strays(out: Path, planned: set[str]) -> None:
    """Temp files of killed tasks, and shards of an older plan, under our own sub-folders."""
    for sub in ("ahsn", "aesn"):
        for p in (out / sub).rglob("*") if (out / sub).is_dir() else []:
            rel = str(p.relative_to(out))
            if p.is_file() and (".tar.tmp-" in p.name or (p.suffix == ".tar" and rel not in planned)):
                p.unlink()


# ----------------------------------------------------------------------------- executors


class _executor:
    """Context manager giving ``pmap(fn, arg_tuples, desc) -> iterator of results``.

    "ray": one Ray task per item, at most 2 per CPU in flight (bounded driver memory),
    results in completion order; "serial": the same in this process.
    """

    def __init__(self, kind: str, cfg: Config) -> None:
        if kind not in ("ray", "serial"):
            raise UsageError(f"unknown executor {kind!r} (ray | serial)")
        self.kind, self.cfg, self.started = kind, cfg, False

    def __enter__(self) -> Callable[..., Iterator[Any]]:
        if self.kind == "serial":
            return _serial_map
        import ray

        if not ray.is_initialized():
            addr = self.cfg.ray.address
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                                      "log_to_driver": True}
            if addr:
                ray.init(address=addr, **kwargs)
            else:
                ray.init(num_cpus=self.cfg.ray.num_cpus, **kwargs)
            self.started = True
        return _ray_map

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr, disable=None, dynamic_ncols=True)


def _serial_map(fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
    with _progress(len(items), desc) as bar:
        for args in items:
            yield fn(*args)
            bar.update(1)


def _ray_map(fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: list = []
    queue = list(items)
    with _progress(len(items), desc) as bar:
        while queue or pending:
            while queue and len(pending) < limit:
                pending.append(remote.remote(*queue.pop(0)))
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
            bar.update(1)
