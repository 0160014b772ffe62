"""What a run trains on, batch by batch: the streamed shards (:class:`ShardData`) or the
feature cache (:class:`~serwild.trainer.features.FeatureData`), chosen by :func:`data_source`;
both are sources of the one training loader (:func:`serwild.data.loaders.epoch_loader`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from serwild.config import Config
from serwild.data.loaders import make_eval_loader, make_train_loader
from serwild.errors import UsageError
from serwild.processes.distributed import Dist, log
from serwild.trainer.features import (
    FeatureData,
    cache_records,
    cache_spec,
    default_cache_root,
    load_feature_cache,
    resolve_feature_cache,
)
from serwild.trainer.features_write import build_feature_cache
from serwild.trainer.preflight import DataPlan, agree


def train_seed(cfg: Config) -> int:
    """The seed of a run's data order and dropout: ``train.seed``, else the build's ``seed`` (so
    several training seeds can run on one build, and runs that set none train as before)."""
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


@dataclass(frozen=True)
class ShardData:
    """A run's batches streamed from its shards: images, for the whole model (the other data
    source is the feature cache's :class:`~serwild.trainer.features.FeatureData`)."""

    plan: DataPlan
    cfg: Config
    d: Dist
    steps: int  # batches per epoch, every rank
    batch: int  # this rank's validation batch

    def train_batches(self, epoch: int, first: int, rank: int, world_size: int, batch: int,
                      began: tuple[int, int] | None = None) -> Any:
        """Batches ``first`` … of rank ``rank``'s ``epoch`` (``began``: see
        :func:`~serwild.data.loaders.epoch_loader`)."""
        t, on_gpu = self.cfg.train, self.d.device.type == "cuda"  # uint8 batches, pinned, normalised on the GPU
        return make_train_loader(self.plan.train, self.plan.classes, batch, self.steps,
                                 seed=train_seed(self.cfg), epoch=epoch, rank=rank, world_size=world_size,
                                 num_workers=t.num_workers, prefetch_factor=t.prefetch_factor,
                                 shuffle_buffer=t.shuffle_buffer, start_batch=first, pin_memory=on_gpu,
                                 as_uint8=on_gpu, repeats=self.plan.repeats, began=began)

    def val_batches(self) -> Any:
        val, on_gpu = self.plan.val, self.d.device.type == "cuda"
        if val is None:
            return iter(())
        return make_eval_loader(val.urls, self.batch, self.cfg.train.num_workers, self.d.rank, self.d.world_size,
                                counts=val.counts, classes=self.plan.classes, as_uint8=on_gpu,
                                pin_memory=on_gpu, remote=val.remote)

    def net(self, model: nn.Module) -> nn.Module:
        return model


def data_source(cfg: Config, d: Dist, plan: DataPlan, model: nn.Module, batch: int,
                 steps: int) -> ShardData | FeatureData:
    """The feature cache where it is on and exact, else the streamed shards."""
    return _feature_data(cfg, d, plan, model, batch, steps) or ShardData(plan, cfg, d, steps, batch)


def _feature_data(cfg: Config, d: Dist, plan: DataPlan, model: nn.Module, batch: int,
                  steps: int) -> FeatureData | None:
    """The cached features of this run's shards, or None where the cache is off. Every rank
    computes its share of the build's missing cache files (all conditions and folds, so every
    run of the build reuses them); ``agree`` is the barrier, and a data error on one rank
    stops all of them."""
    t = cfg.train
    prefix = resolve_feature_cache(t.feature_cache, t.freeze or [])
    if prefix is None:
        return None
    if plan.build.is_remote:  # the cache is written next to the build: a local folder only
        if t.feature_cache == "on":
            raise UsageError(f"train.feature_cache=on needs a local build folder, not {plan.location}")
        log(d, f"note: feature cache off: {plan.location} is not a local folder")
        return None
    spec = cache_spec(t.feature_cache_dir or default_cache_root(plan.location), plan.manifest.fingerprint,
                      model, prefix)
    built = agree(d, lambda: build_feature_cache(plan.location, cache_records(plan.manifest, t.dataset), model,
                                                  d.device, spec, plan.classes, rank=d.rank,
                                                  world_size=d.world_size, batch_size=batch,
                                                  num_workers=t.num_workers), on=True)
    for note in (n for b in built if b for n in b.notes):  # stale or unreadable files, rebuilt by any rank
        log(d, note)
    log(d, f"feature cache {spec.dir}: {sum(b.written for b in built if b)} shard(s) computed, "
           f"{sum(b.skipped for b in built if b)} reused")
    place = d.device if d.device.type == "cuda" else None  # a GPU holds all features; a CPU memory-maps them
    val = (load_feature_cache(spec, plan.val_records, device=place, build_dir=plan.location)
           if plan.val_records else None)
    train = load_feature_cache(spec, plan.train_records, device=place, build_dir=plan.location)
    return FeatureData(prefix, train, val, steps, train_seed(cfg), batch, d.rank, d.world_size, t.shuffle_buffer,
                       plan.repeats)


def epoch_batches(data: ShardData | FeatureData, d: Dist, batch: int, epoch: int, first: int = 0,
                  streams: tuple[int, int] | None = None) -> Any:
    """Batches ``first`` … of this rank's ``epoch`` from ``data`` (the cached features or the
    streamed shards, both exact epochs in an order fixed by train seed, epoch, rank and world
    size), ``batch`` samples each. ``streams``: (ranks, batch) of the world that began the epoch,
    where it was not this one (a mid-epoch last.pt): the epoch continues as they dealt it."""
    return data.train_batches(epoch, first, d.rank, d.world_size, batch, began=streams)


def per_rank_batch(t: Any, d: Dist) -> int:
    """This rank's batch: ``train.batch_size_per_rank``, else the global ``train.batch_size`` divided
    across ranks."""
    if t.batch_size_per_rank is not None:
        return int(t.batch_size_per_rank)
    global_batch = t.batch_size
    batch = global_batch // d.world_size
    if batch < 1:
        raise UsageError(f"train.batch_size={global_batch} is smaller than the {d.world_size} ranks")
    if global_batch % d.world_size:
        log(d, f"note: batch {global_batch} is not divisible by {d.world_size} ranks; using "
               f"{batch} per rank ({batch * d.world_size} in all)")
    return batch
