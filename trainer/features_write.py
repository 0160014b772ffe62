"""Computing a frozen-feature cache (:mod:`serwild.trainer.features`: what the cache is, its key,
its files and how a run reads them): :func:`build_feature_cache` runs each missing or stale
TRAIN shard once through the frozen prefix, in the trainer's one evaluation loop, and writes
its file through a temp file + rename. Rank r computes ``records[r::world]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from serwild.data.loaders import make_eval_loader
from serwild.data.records import ShardRecord
from serwild.data.transforms import IMAGE_SIZE, MEAN, STD
from serwild.errors import UsageError
from serwild.processes.atomic import atomic_write, unwritable
from serwild.trainer.features import (
    CACHE_FORMAT,
    INFO_FILE,
    STORE,
    STORE_NAME,
    CacheFileError,
    CacheSpec,
    check_prefix,
    read_cache_file,
    shard_cache_file,
    stale_reason,
    tar_keys,
    weights_digest,
)
from serwild.trainer.outputs import batch_outputs


@dataclass(frozen=True)
class CacheBuild:
    """What one rank's :func:`build_feature_cache` did."""

    written: int  # shard files computed and written
    skipped: int  # shard files already there (an earlier run, or another job)
    samples: int  # images pushed through the prefix
    seconds: float
    bytes: int  # size of the files written
    notes: tuple[str, ...] = ()  # one line per file that was there but stale or unreadable (rebuilt)


def build_feature_cache(build_dir: str | Path, records: Sequence[ShardRecord], model: nn.Module,
                        device: torch.device, spec: CacheSpec, classes: Sequence[str], *, rank: int = 0,
                        world_size: int = 1, batch_size: int = 64, num_workers: int = 0) -> CacheBuild:
    """Write this rank's share (``records[rank::world_size]``) of the cache; skip finished files.

    ``spec`` comes from :func:`cache_spec` for this (unwrapped) ``model``. Each shard is read
    once with the evaluation loader (which refuses a short or corrupt shard), with at most one
    loader worker, so samples arrive in shard order and are split into files by the manifest's
    counts as the evaluation loop hands them over, batch by batch (one rank's share of a
    paper-size cache is gigabytes). Every rank must then meet the others (a barrier, or
    ``agree``, which also hands a failure on one rank to all) before loading the cache.
    """
    start = time.perf_counter()
    if weights_digest(model, spec.prefix) != spec.weights:
        raise ValueError(f"the model's features[:{spec.prefix}] are not the weights cache {spec.key} was made for")
    front = check_prefix(model, spec.prefix)[:spec.prefix]
    cache_dir = spec.dir
    mine = list(records)[rank::world_size]
    notes: list[str] = []
    todo = [r for r in mine if _needs_building(shard_cache_file(cache_dir, r), r, spec.key, Path(build_dir), notes)]
    writer = _ShardWriter(spec, Path(build_dir), todo)
    if todo:
        why = unwritable(cache_dir)
        if why is not None:
            raise UsageError(f"feature cache folder {cache_dir} cannot be written ({why}) and {len(todo)} of its "
                             f"files are missing or stale: set train.feature_cache_dir to a writable folder, "
                             f"or train.feature_cache=off")
        cache_dir.mkdir(parents=True, exist_ok=True)
        on_gpu = device.type == "cuda"
        loader = make_eval_loader([str(Path(build_dir) / r.path) for r in todo], batch_size,
                                  min(1, num_workers), counts=[r.count for r in todo],
                                  classes=classes, as_uint8=on_gpu, pin_memory=on_gpu)
        with torch.no_grad():  # an empty shard's file still needs the features' shape
            writer.shape = tuple(front(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)).shape[1:])
        writer.drain()  # shards with no samples
        for feats, labels, _ in batch_outputs(front, loader, device):
            peak = feats.abs().max().item() if feats.numel() else 0.0
            if peak > torch.finfo(STORE).max:
                raise UsageError(f"features reach {peak:.3g}, past {STORE_NAME}'s range: they cannot be cached; "
                                 f"train with train.feature_cache=off")
            writer.add(feats.to(STORE), labels)
        writer.finish()
    if rank == 0:
        _write_info(spec, model)
    return CacheBuild(writer.written, len(mine) - len(todo), writer.samples, time.perf_counter() - start,
                      writer.bytes, tuple(notes))


def _needs_building(path: Path, record: ShardRecord, key: str, build_dir: Path, notes: list[str]) -> bool:
    """Whether ``path`` must be (re)computed: missing, or there but stale or unreadable (a note in
    ``notes`` says which and why). A file holding foreign objects is refused instead."""
    if not path.is_file():
        return True
    try:
        why = stale_reason(read_cache_file(path), key, record, build_dir)
    except CacheFileError as e:
        if e.hostile:
            raise
        why = e.why
    if why is None:
        return False
    notes.append(f"note: feature cache file {path} {why}: rebuilt")
    return True


class _ShardWriter:
    """Cuts the loader's stream of (features, labels) batches into one file per shard, by the
    manifest's counts (the loader has already refused a shard with another count)."""

    def __init__(self, spec: CacheSpec, build_dir: Path, records: list[ShardRecord]) -> None:
        self.spec, self.build_dir, self.queue = spec, build_dir, list(records)
        self.parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.have = self.written = self.samples = self.bytes = 0
        self.shape: tuple[int, ...] = ()

    def add(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        self.parts.append((feats, labels))
        self.have += len(labels)
        self.samples += len(labels)
        self.drain()

    def drain(self) -> None:
        while self.queue and self.have >= self.queue[0].count:
            record = self.queue.pop(0)
            n = record.count
            feats = torch.cat([f for f, _ in self.parts]) if self.parts else torch.empty(0, *self.shape)
            labels = torch.cat([x for _, x in self.parts]) if self.parts else torch.empty(0, dtype=torch.long)
            self.bytes += _write_shard(self.spec, record, feats[:n].to(STORE), labels[:n],
                                       self.build_dir / record.path)
            self.written += 1
            self.parts = [(feats[n:], labels[n:])] if n < len(labels) else []
            self.have -= n

    def finish(self) -> None:
        self.drain()
        if self.queue or self.have:
            where = self.queue[0].path if self.queue else "the last shard"
            raise UsageError(f"{where}: the loader's samples do not add up to the manifest's counts "
                             f"({self.have} left over)")


def _write_shard(spec: CacheSpec, record: ShardRecord, feats: torch.Tensor, labels: torch.Tensor, tar: Path) -> int:
    keys = tar_keys(tar)
    if len(keys) != len(labels):
        raise UsageError(f"{record.path} lists {len(keys)} sample keys but the loader read {len(labels)}")
    obj = {"format": CACHE_FORMAT, "key": spec.key, "shard": record.path, "sha256": record.sha256,
           "features": feats.contiguous().clone(), "labels": labels.clone(), "keys": keys}
    path = shard_cache_file(spec.dir, record)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path.stat().st_size


def _write_info(spec: CacheSpec, model: nn.Module) -> None:
    """A human-readable note of what the folder holds (written once, by rank 0)."""
    path = spec.dir / INFO_FILE
    if path.is_file():
        return
    info = {"format": CACHE_FORMAT, "key": spec.key, "prefix": spec.prefix, "dtype": STORE_NAME,
            "cut_after": f"features.{spec.prefix - 1} ({model.features[spec.prefix - 1]})",
            "build_fingerprint": spec.fingerprint, "weights_sha256": spec.weights,
            "transform": {"size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD)}}
    with atomic_write(path, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------- reading
