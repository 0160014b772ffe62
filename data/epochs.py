"""One definition of an epoch: which samples each rank trains on, in what order (docs/training.md, "Exact epochs").

The streaming loader (:mod:`serwild.data.loaders`) reads each rank's span (:func:`epoch_pieces`) from the tars and
the feature cache (:mod:`serwild.trainer.features`) takes the same positions from its rows, so both give the very
same batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from serwild import seeds
from serwild.data.records import ShardRecord
from serwild.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` (in file order) of shard ``shard`` (an index into the ShardSet),
    dealt in ``epoch``'s order (positions count each sample's copies under :class:`Repeats`)."""

    shard: int
    start: int
    stop: int
    epoch: int = 0


@dataclass(frozen=True)
class Repeats:
    """``train.balance: sampler``: a class-balanced epoch that stays an exact epoch (docs/training.md).

    Class k's samples are dealt r_k = n_max / n_k times each: the j-th class-k sample of a shard gets
    ⌊(j + 1)·r_k + φ⌋ − ⌊j·r_k + φ⌋ copies, with a phase φ drawn from (seed, epoch, shard, class), so a shard's
    dealt count is known before a byte of it is read, ranks still take contiguous spans of one stream, and a resume
    continues it exactly."""

    class_counts: tuple[tuple[int, ...], ...]  # per shard (in ShardSet order), per class index

    @classmethod
    def of(cls, records: Sequence[ShardRecord], classes: Sequence[str]) -> Repeats:
        """From manifest shard records (their ``class_counts``), in the order they are read."""
        return cls(tuple(tuple(r.count_of(c) for c in classes) for r in records))

    @property
    def ratios(self) -> tuple[float, ...]:
        totals = [sum(col) for col in zip(*self.class_counts)]
        most = max(totals, default=0)
        return tuple(most / n if n else 0.0 for n in totals)

    def epoch_size(self) -> int:
        """The samples of one balanced epoch: every class present as many times as the largest."""
        totals = [sum(col) for col in zip(*self.class_counts)]
        return max(totals, default=0) * sum(1 for n in totals if n)

    def _phase(self, seed: int, epoch: int, shard: int, k: int) -> float:
        return seeds.derive(seed, "balance", epoch, shard, k) / 2**64

    def counts(self, seed: int, epoch: int) -> list[int]:
        """Each shard's samples as dealt in ``epoch`` (copies counted)."""
        r = self.ratios
        return [sum(math.floor(n * r[k] + self._phase(seed, epoch, s, k)) for k, n in enumerate(row))
                for s, row in enumerate(self.class_counts)]

    def dealt(self, items: Iterable[tuple[T, int]], seed: int, epoch: int, shard: int) -> Iterator[T]:
        """Shard ``shard``'s items in file order, (item, class index), each as many times as dealt."""
        r, seen = self.ratios, [0] * len(self.ratios)
        phases = [self._phase(seed, epoch, shard, k) for k in range(len(r))]
        for item, k in items:
            j, phase = seen[k], phases[k]
            seen[k] += 1
            for _ in range(math.floor((j + 1) * r[k] + phase) - math.floor(j * r[k] + phase)):
                yield item


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order: a permutation drawn from (seed, epoch), the same on every rank."""
    gen = torch.Generator().manual_seed(seeds.derive(seed, "shards", epoch) & (2**63 - 1))
    return torch.randperm(n_shards, generator=gen).tolist()


def epoch_pieces(counts: Sequence[int], per_rank: int, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, repeats: Repeats | None = None) -> list[Piece]:
    """What rank ``rank`` reads in ``epoch``: the span ``[rank × per_rank, (rank + 1) × per_rank)`` of the stream
    "shards in epoch's order, then in epoch + 1's, …". The ranks' spans tile the stream: with
    ``per_rank × world_size`` ≥ the samples, every sample is in exactly one span."""
    if sum(counts) <= 0:
        raise UsageError("the selected training shards hold no samples (check train.dataset, train.conditions)")
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    pieces, pos, e = [], 0, epoch
    while pos < hi:
        dealt = counts if repeats is None else repeats.counts(seed, e)
        for s in shard_order(len(counts), seed, e):
            a, b = pos, pos + dealt[s]
            if b > lo and a < hi:
                pieces.append(Piece(s, max(lo, a) - a, min(hi, b) - a, e))
            pos = b
            if pos >= hi:
                break
        e += 1
    return pieces


def buffer_shuffle(items: Iterable[T], size: int, seed: int) -> Iterator[T]:
    """A shuffle buffer (webdataset's idea) whose output depends only on the input order and
    the seed: every DataLoader worker replays it identically."""
    rng = random.Random(seed)
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        k = rng.randrange(size)
        buf[k], item = item, buf[k]
        yield item
    rng.shuffle(buf)
    yield from buf


def steps_per_epoch(samples_per_epoch: int, batch_per_rank: int, world_size: int) -> int:
    """Batches every rank runs per epoch: enough for ``samples_per_epoch`` samples overall."""
    return max(1, math.ceil(samples_per_epoch / (batch_per_rank * world_size)))
