"""One definition of an epoch: which samples each rank trains on, in what order.

The epoch's sample stream is the shards in an order drawn from (seed, epoch), followed by the
next epoch's order; rank r takes the r-th contiguous span of ``num_batches × batch_size``
samples of it (:func:`epoch_pieces`), shuffled in a buffer seeded from (seed, epoch, rank)
(:func:`buffer_shuffle`). The streaming loader (:mod:`serwild.data.loaders`) reads these spans
from the tars; the feature cache (:mod:`serwild.trainer.features`) takes the same positions
from its rows, so both give the very same batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from serwild import seeds
from serwild.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` (in file order) of shard ``shard`` (an index into the ShardSet)."""

    shard: int
    start: int
    stop: int


def shard_order(n_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shard order: a permutation drawn from (seed, epoch), the same on every rank."""
    gen = torch.Generator().manual_seed(seeds.derive(seed, "shards", epoch) & (2**63 - 1))
    return torch.randperm(n_shards, generator=gen).tolist()


def epoch_pieces(counts: Sequence[int], per_rank: int, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1) -> list[Piece]:
    """What rank ``rank`` reads in ``epoch``: the span ``[rank × per_rank, (rank + 1) × per_rank)``
    of the stream "shards in epoch's order, then in epoch + 1's, …" (sample counts ``counts``).

    The spans of all ranks tile the stream: with ``per_rank × world_size`` ≥ the samples,
    every sample is in exactly one span, and what is left over comes from the next orders."""
    total = sum(counts)
    if total <= 0:
        raise UsageError("the selected training shards hold no samples (check train.dataset, train.conditions)")
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    pieces, pos, e = [], 0, epoch
    while pos < hi:
        for s in shard_order(len(counts), seed, e):
            a, b = pos, pos + counts[s]
            if b > lo and a < hi:
                pieces.append(Piece(s, max(lo, a) - a, min(hi, b) - a))
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
