"""Exact epochs in the streaming loader: every sample once per epoch across ranks and
workers, the same order whatever the worker count, and a mid-epoch start that continues
an epoch exactly."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import pytest

from serwild.builder.labels import PRESETS
from serwild.data.epochs import epoch_pieces
from serwild.data.loaders import (
    ShardError,
    decode_sample,
    make_eval_loader,
    make_train_loader,
    read_shards,
    shard_set,
)
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord
from tests.trainer.test_data import _keys

CLASSES = PRESETS["ahsn"]  # the view the test builds label by, in class-index order


def _records(manifest: Manifest) -> list[ShardRecord]:
    return [s for s in manifest.shards if s.split == "train" and s.fold in (0, 1)]


def _pieces_cover(counts: list[int], per_rank: int, world: int) -> Counter:
    """(epoch-0 order position) → times taken over all ranks, from the plan alone."""
    seen: Counter = Counter()
    for rank in range(world):
        for p in epoch_pieces(counts, per_rank, seed=3, epoch=0, rank=rank, world_size=world):
            seen.update((p.shard, i) for i in range(p.start, p.stop))
    return seen


@pytest.mark.parametrize(("counts", "world", "batch"), [([12], 2, 5), ([12, 7, 3], 2, 4), ([5, 0, 9, 1], 3, 2),
                                                        ([1], 2, 3), ([40, 40, 40], 2, 8)])
def test_plan_takes_every_sample_once_plus_the_fill(counts: list[int], world: int, batch: int) -> None:
    total = sum(counts)
    steps = -(-total // (batch * world))
    seen = _pieces_cover(counts, batch * steps, world)
    every = {(s, i) for s, n in enumerate(counts) for i in range(n)}
    assert every <= set(seen)  # every sample of the epoch is taken…
    extra = sum(seen.values()) - total
    assert extra == batch * world * steps - total < batch * world  # …and only the fill is taken twice
    for rank in range(world):  # every rank gets exactly its span: no rank can run out first
        pieces = epoch_pieces(counts, batch * steps, seed=3, epoch=0, rank=rank, world_size=world)
        assert sum(p.stop - p.start for p in pieces) == batch * steps


def _truth(shards) -> Counter:
    """(label, pixel checksum) of every sample, read straight from the tars."""
    out: Counter = Counter()
    for url in shards.urls:
        for sample in read_shards([{"url": url}], {}):
            image, label, _ = decode_sample(sample, CLASSES, as_uint8=True)
            out[(label, int(image.sum()))] += 1
    return out


def _epoch_keys(shards, batch: int, steps: int, rank: int, world: int, workers: int, epoch: int = 0,
                start: int = 0) -> list[tuple[int, ...]]:
    """(label, pixel checksum) per sample, in the order the rank trains on them."""
    out = []
    for images, labels in make_train_loader(shards, CLASSES, batch, steps, seed=7, epoch=epoch, rank=rank,
                                            world_size=world, num_workers=workers, shuffle_buffer=10,
                                            start_batch=start, as_uint8=True):
        out += [(int(y), int(x.sum())) for x, y in zip(images, labels)]
    return out


def test_an_epoch_delivers_every_key_once_across_ranks_and_workers(tiny_build: Path, manifest: Manifest) -> None:
    records = _records(manifest)
    shards = shard_set(tiny_build, records)
    batch, world = 3, 2
    steps = -(-shards.samples // (batch * world))
    delivered: list[tuple[int, int]] = []
    for rank in range(world):
        got = _epoch_keys(shards, batch, steps, rank, world, workers=2)
        assert len(got) == batch * steps  # full batches, the same count on every rank
        delivered += got
    # A sample is named by its label and pixels; count them in the tars themselves.
    truth, got = _truth(shards), Counter(delivered)
    assert sum(truth.values()) == shards.samples == len(_keys(shards.urls))
    assert not truth - got  # every sample was used…
    assert sum((got - truth).values()) == batch * world * steps - shards.samples  # …once, plus the fill


def test_order_does_not_depend_on_worker_count(tiny_build: Path, manifest: Manifest) -> None:
    shards = shard_set(tiny_build, _records(manifest))
    orders = {w: _epoch_keys(shards, 3, 7, rank=1, world=2, workers=w) for w in (0, 1, 2)}
    assert orders[0] == orders[1] == orders[2]
    assert orders[0] != _epoch_keys(shards, 3, 7, rank=1, world=2, workers=0, epoch=1)  # epochs differ


def test_a_mid_epoch_start_continues_the_epoch_exactly(tiny_build: Path, manifest: Manifest) -> None:
    shards = shard_set(tiny_build, _records(manifest))
    whole = _epoch_keys(shards, 3, 7, rank=0, world=2, workers=2)
    for start in (1, 4, 6):
        assert _epoch_keys(shards, 3, 7, rank=0, world=2, workers=2, start=start) == whole[3 * start:]


def test_a_manifest_that_lists_a_shard_under_another_split_is_refused(tiny_build: Path, manifest: Manifest,
                                                                       tmp_path: Path) -> None:
    """A training shard listed as a test shard passes every size and hash check: the samples'
    own JSON must disagree with the record, and the loaders say so."""
    train = _records(manifest)[0]
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    lying = dataclasses.replace(train, split="test", fold=None)
    shards = shard_set(build, [lying])
    with pytest.raises(ShardError, match="manifest lists its shard"):
        list(make_eval_loader(shards.urls, 4, 0, counts=shards.counts, classes=CLASSES, identities=shards.identities))
    with pytest.raises(ShardError, match="manifest lists its shard"):
        list(make_train_loader(shards, CLASSES, 2, 2, seed=0, epoch=0))
    honest = shard_set(build, [train])
    assert sum(len(y) for _, y, _ in make_eval_loader(honest.urls, 4, 0, counts=honest.counts, classes=CLASSES,
                                                       identities=honest.identities)) == train.count
