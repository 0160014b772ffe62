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

import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import ray
from tqdm import tqdm

from serwild import atomic
from serwild.builder import card, plan, scan
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Reject, read_corpus
from serwild.builder.manifest import make_manifest
from serwild.builder.shards import build_shard
from serwild.config import Config
from serwild.data.manifest import sha256_file
from serwild.errors import UsageError
from serwild.synth.corpus import write_synthetic_corpus

T = TypeVar("T")
LOG = "build-log.jsonl"
HOLD_ENV = "SERWILD_BUILD_HOLD_AFTER"  # test hook: after N shards, stop and wait to be killed
SCAN_CHUNK = 32  # utterances per scan task: enough work to hide a task's overhead


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
        chunks = [utts[i:i + SCAN_CHUNK] for i in range(0, len(utts), SCAN_CHUNK)]
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
        with open(out / LOG, "a") as log:
            for stats in with_hold(pmap(build_shard, [(s, str(out), cfg.audio) for s in todo], "build shards")):
                done[stats.path] = asdict(stats)
                log.write(json.dumps(done[stats.path], sort_keys=True) + "\n")
                log.flush()
                os.fsync(log.fileno())
    records = [done[s.path] for s in specs]
    for r in records:
        rejects.extend(Reject(**x) for x in r.pop("rejects", []))
    rejects.sort(key=lambda r: (r.stage, r.item, r.block if r.block is not None else -1, r.reason))
    atomic.write_text(out / "rejects.jsonl", "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n"
                                                      for r in rejects))
    manifest = make_manifest(cfg, records, rejects, scanned)
    atomic.write_json(out / "manifest.json", manifest)
    atomic.write_text(out / "DATASET.md", card.dataset_card(manifest))
    return out


def with_hold(results: Iterator[T]) -> Iterator[T]:
    """The results as they come, unless the test hook ``SERWILD_BUILD_HOLD_AFTER=N`` is set:
    then, once N shards are logged, the driver stops there (as if slow) until it is killed,
    so a test can kill a build mid-way deterministically."""
    hold = int(os.environ.get(HOLD_ENV, "0"))
    for i, item in enumerate(results, start=1):
        yield item
        if i == hold:
            print(f"{HOLD_ENV}: holding after {i} shards", file=sys.stderr, flush=True)
            while True:
                time.sleep(1)


def _ensure_corpus(cfg: Config) -> None:
    root = Path(cfg.corpus.root)
    if cfg.corpus.kind == "synthetic" and not root.exists():
        print(f"corpus.root {root} does not exist: synthesising the '{cfg.corpus.synth_size}' corpus there",
              file=sys.stderr)
        write_synthetic_corpus(root, size=cfg.corpus.synth_size, seed=cfg.seed)


def _resume_state(out: Path, specs: list, audio_cfg: AudioConfig) -> tuple[dict[str, dict], list]:
    """Shards from an earlier run of the same plan whose files still match; the rest to build."""
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
                ray.shutdown()


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="task", file=sys.stderr, disable=None, dynamic_ncols=True)


def _serial_map(fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
    with _progress(len(items), desc) as bar:
        for args in items:
            yield fn(*args)
            bar.update(1)


def _ray_map(fn: Callable, items: list[tuple], desc: str) -> Iterator[Any]:
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
