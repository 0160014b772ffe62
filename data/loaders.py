"""Streaming input: shard URLs → batches, for training (exact epochs, docs/training.md) and evaluation (each sample
exactly once: shards dealt to ranks, then to workers).

Training: each rank reads its span of the epoch's stream (:mod:`serwild.data.epochs`), so every rank runs the same
number of full batches whatever the shard count (the DDP hangs of webdataset issues #188/#194/#225 cannot happen).
Every DataLoader worker reads its rank's whole stream (raw bytes, cheap) and decodes only its batches
``start + w, start + w + W, …``: the DataLoader hands batches back worker by worker, so a rank sees the same samples
in the same order with 0, 1 or 2 workers, and a resume at batch k continues exactly. Both loaders refuse a short or
corrupt shard: a tar cut at a member boundary reads as valid.
"""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from serwild import seeds
from serwild.data.cache import RemoteShards
from serwild.data.epochs import Piece, Repeats, buffer_shuffle, epoch_pieces
from serwild.data.fetch import RemoteError
from serwild.data.records import ShardRecord
from serwild.data.remote import Location, open_location
from serwild.data.transforms import normalise, resize_uint8
from serwild.errors import UsageError

T = TypeVar("T")


class ShardError(UsageError):
    """A shard that does not match the manifest (short, corrupt, wrong content)."""


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs with their manifest sample counts (what the count check compares with),
    and what reading a remote build's shards takes (None: local files)."""

    urls: list[str]
    counts: list[int]
    remote: RemoteShards | None = None
    # Per URL, what each sample's JSON must say (dataset, split, fold, condition): the
    # record it was listed under. None: not checked (shards given without a manifest).
    identities: list[dict[str, Any]] | None = None

    @property
    def samples(self) -> int:
        return sum(self.counts)


def shard_set(build: str | Path | Location | Any, records: Sequence[ShardRecord]) -> ShardSet:
    """Manifest records (``Manifest.select``) → URLs under ``build`` (a folder, a ``Location`` or a ``Build``; never
    leaving its base), their counts, and what reading a remote build's shards takes."""
    source = getattr(build, "source", build)  # a Build (serwild.data.build) holds its Location
    if not isinstance(source, Location):
        source = open_location(source)
    urls = source.shard_urls(list(records))
    remote = RemoteShards(source.options, {u: (r.sha256, r.bytes) for u, r in zip(urls, records)})
    return ShardSet(urls, [r.count for r in records], remote if source.is_remote else None,
                    [identity(r) for r in records])


IDENTITY = ("dataset", "split", "fold", "condition")  # what a sample's JSON and its shard record share


def identity(record: ShardRecord) -> dict[str, Any]:
    """The fields of a manifest record that every sample of its shard repeats in its JSON."""
    return {k: getattr(record, k) for k in IDENTITY}


# ----------------------------------------------------------------------------- pipeline stages


def read_shards(shards: Iterable[dict], expected: dict[str, int],
                remote: RemoteShards | None = None) -> Iterator[dict]:
    """Shard stream (``dict(url=…)``) → samples; ShardError when a shard read to its end holds another number of
    samples than the manifest says (a stream cut off mid-shard closes this generator at a ``yield`` and never
    reaches that shard's check)."""
    for shard in shards:
        n, url = 0, shard["url"]
        for sample in _tar_samples(url, remote):
            n += 1
            yield sample
        if url in expected and n != expected[url]:
            raise ShardError(f"shard {url} holds {n} samples, the manifest says {expected[url]}: "
                             f"it is short or corrupt (run `serwild verify` on the build)")


def _tar_samples(url: str, remote: RemoteShards | None = None) -> Iterator[dict]:
    """The samples of one shard, in file order; a damaged tar or a failed fetch is one line. Read from a local file
    or a remote shard's local copy, not webdataset's ``gopen``, whose http opener runs curl without a read timeout;
    webdataset only groups the tar's members into samples."""
    n = 0
    try:
        stream = remote.open(url) if remote is not None else open(url, "rb")  # noqa: SIM115 - closed below
    except RemoteError as e:
        raise type(e)(str(e)) from None  # the same kind (Unreachable: exit 1), without webdataset's additions
    except FileNotFoundError:
        raise ShardError(f"shard {url} not found (run `serwild verify` on the build)") from None
    except OSError as e:
        raise ShardError(f"shard {url} cannot be read ({e.strerror or e})") from None
    with stream:
        samples = wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"url": url, "stream": stream}]))
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                return
            except RemoteError as e:  # the network, not the shard: its own one line, naming the URL
                raise type(e)(str(e)) from None
            except (tarfile.TarError, OSError, ValueError) as e:  # a damaged tar, not a bug of ours
                raise ShardError(f"shard {url} is corrupt after {n} samples ({type(e).__name__}: {e})") from None
            n += 1
            yield sample


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (palette or RGB) → (H, W, 3) uint8, as webdataset's ``rgb8`` would."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def sample_meta(sample: dict, classes: Sequence[str], expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """A raw sample's metadata (its JSON), checked against the manifest: a png and a json member;
    ``expect``, the identity of the record the shard was listed under (a sample whose JSON says
    otherwise, a training shard listed as test, is refused); and a ``label`` that is
    ``classes[class_index]`` (a manifest that names the classes in another order would otherwise
    train, score, export and publish every block under another class's name)."""
    key, url = sample.get("__key__"), sample.get("__url__")
    if "png" not in sample or "json" not in sample:
        raise ShardError(f"sample {key} in {url} lacks a png or json member "
                         f"(has {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        meta = json.loads(sample["json"])
    except ValueError as e:
        raise ShardError(f"sample {key} in {url} does not decode ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise ShardError(f"sample {key} in {url}: its json is not an object")
    if expect is not None and (wrong := {k: meta.get(k) for k in expect if meta.get(k) != expect[k]}):
        raise ShardError(f"sample {key} in {url} says {wrong}, but the manifest lists its shard as "
                         f"{ {k: expect[k] for k in wrong} }: the manifest does not describe this build")
    label = meta.get("class_index")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(classes):
        raise ShardError(f"sample {key} in {url}: class_index {label!r} is not in 0..{len(classes) - 1}")
    if meta.get("label") != classes[label]:
        raise ShardError(f"sample {key} in {url} is labelled {str(meta.get('label'))[:64]!r} at class_index {label}, "
                         f"where the manifest names {classes[label]!r}: the manifest does not describe this build")
    return meta


def decode_sample(sample: dict, classes: Sequence[str], as_uint8: bool = False,
                  expect: dict[str, Any] | None = None) -> tuple[torch.Tensor, int, dict]:
    """A raw sample → (image (3, 256, 256), class index, metadata), its metadata checked by :func:`sample_meta`. The
    image is uint8 with ``as_uint8`` (a GPU normalises the batch on arrival: a quarter of the bytes to move), else
    normalised here: on a CPU, image by image is several times faster than a whole batch later (cache-sized
    tensors)."""
    meta = sample_meta(sample, classes, expect)
    try:
        rgb = decode_png(sample["png"])
    except (ValueError, OSError, SyntaxError) as e:  # PIL raises these for damaged PNGs
        raise ShardError(f"sample {sample.get('__key__')} in {sample.get('__url__')} does not decode "
                         f"({type(e).__name__}: {e})") from None
    image = resize_uint8(rgb)
    return (image if as_uint8 else normalise(image)), meta["class_index"], meta


def collate_train(batch: list[tuple[torch.Tensor, int, dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    # default_collate stacks straight into shared memory inside a DataLoader worker, which
    # saves a copy of every batch on its way to the main process.
    images = default_collate([b[0] for b in batch])
    return images, torch.tensor([b[1] for b in batch], dtype=torch.long)


def collate_eval(batch: list[tuple[torch.Tensor, int, dict]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    images, labels = collate_train(batch)
    return images, labels, [b[2] for b in batch]


class _Decode:
    """A picklable map stage (DataLoader workers may be spawned, not forked)."""

    def __init__(self, classes: Sequence[str], as_uint8: bool, identities: dict[str, dict] | None = None) -> None:
        self.classes, self.as_uint8, self.identities = tuple(classes), as_uint8, identities or {}

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, dict]:
        return decode_sample(sample, self.classes, self.as_uint8, self.identities.get(sample.get("__url__")))


def _counted(items: Iterable[T], read: list[int]) -> Iterator[T]:
    """``items``, counting in ``read[0]`` how many were taken."""
    for item in items:
        read[0] += 1
        yield item


class Source(Protocol):
    """What :class:`EpochStream` reads: per shard, its manifest count, a name for errors, its samples in
    order, a sample's class index (the balanced sampler's input) and the item a batch collates."""

    counts: list[int]

    def name(self, shard: int) -> str: ...

    def samples(self, shard: int) -> Iterator[Any]: ...

    def label(self, sample: Any) -> int: ...

    def item(self, sample: Any) -> tuple[torch.Tensor, int, Any] | tuple[torch.Tensor, int]: ...


class TarSource:
    """The shards' tars as a training loader's source: what :class:`EpochStream` reads from each
    shard, how it labels a sample (the balanced sampler's input) and decodes it. The feature
    cache (:class:`~serwild.trainer.features.CachedTrainData`) is the other source."""

    def __init__(self, shards: ShardSet, decode: _Decode) -> None:
        self.shards, self.decode, self.counts = shards, decode, shards.counts

    def name(self, shard: int) -> str:
        return self.shards.urls[shard]

    def samples(self, shard: int) -> Iterator[dict]:
        return _tar_samples(self.shards.urls[shard], self.shards.remote)

    def label(self, sample: dict) -> int:
        return sample_meta(sample, self.decode.classes)["class_index"]

    def item(self, sample: dict) -> tuple[torch.Tensor, int, dict]:
        return self.decode(sample)


class EpochStream(IterableDataset):
    """One rank's batches of one epoch from a source (see the module docstring). Picklable for
    spawned workers."""

    def __init__(self, source: Source, pieces: list[Piece], batch_size: int, batches: range, shuffle_buffer: int,
                 shuffle_seed: int, repeats: tuple[Repeats, int] | None = None) -> None:
        self.source, self.pieces = source, pieces
        self.batch_size, self.batches = batch_size, batches
        self.shuffle_buffer, self.shuffle_seed = max(1, shuffle_buffer), shuffle_seed
        self.repeats = repeats  # (the balanced sampler's repeats, the run's seed)

    def _raw(self) -> Iterator[Any]:
        """The span's samples in stream order, undecoded; a shard short of a piece is refused."""
        for p in self.pieces:
            count = self.source.counts[p.shard]
            read = [0]
            samples = _counted(self.source.samples(p.shard), read)
            n, ends_shard = 0, p.stop == self._dealt_count(p)
            for sample in itertools.islice(self._dealt(samples, p), p.start, p.stop):
                yield sample
                n += 1
            if n == p.stop - p.start and ends_shard:  # nothing may follow in the tar
                for _ in samples:
                    pass
            if n < p.stop - p.start or (ends_shard and read[0] != count):
                raise ShardError(f"shard {self.source.name(p.shard)} holds {read[0]} samples, the manifest says "
                                 f"{count}: it is short or corrupt (run `serwild verify` on the build)")

    def _dealt(self, samples: Iterator[Any], p: Piece) -> Iterator[Any]:
        """A shard's samples as the epoch deals them: once each, or as the balanced sampler repeats them."""
        if self.repeats is None:
            return samples
        repeats, seed = self.repeats
        return repeats.dealt(((x, self.source.label(x)) for x in samples), seed, p.epoch, p.shard)

    def _dealt_count(self, p: Piece) -> int:
        if self.repeats is None:
            return self.source.counts[p.shard]
        repeats, seed = self.repeats
        return repeats.counts(seed, p.epoch)[p.shard]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        b0, bs = self.batches.start, self.batch_size
        mine: list[tuple[torch.Tensor, int, Any]] = []
        for pos, sample in enumerate(buffer_shuffle(self._raw(), self.shuffle_buffer, self.shuffle_seed)):
            b = pos // bs
            if b >= self.batches.stop:
                return
            if b < b0 or (b - b0) % workers != worker:  # another worker's batch, or one done before a resume
                continue
            mine.append(self.source.item(sample))
            if len(mine) == bs:
                yield collate_train(mine)
                mine = []


# ----------------------------------------------------------------------------- loaders


def make_train_loader(shards: ShardSet, classes: Sequence[str], batch_size: int, num_batches: int, *,
                      as_uint8: bool = False, **epoch: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images (B, 3, 256, 256), labels)`` of this rank's epoch from the shards' tars;
    :func:`epoch_loader` says which, in which order, and takes the rest of the arguments."""
    if not shards.urls:
        raise UsageError("no training shards selected (check train.dataset, train.conditions, cv.fold)")
    identities = dict(zip(shards.urls, shards.identities)) if shards.identities is not None else None
    return epoch_loader(TarSource(shards, _Decode(classes, as_uint8, identities)), batch_size, num_batches, **epoch)


def epoch_loader(source: Source, batch_size: int, num_batches: int, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, prefetch_factor: int = 2, shuffle_buffer: int = 1000,
                 start_batch: int = 0, pin_memory: bool = False, repeats: Repeats | None = None,
                 began: tuple[int, int] | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start_batch … num_batches - 1`` of this rank's epoch from ``source`` (a :class:`TarSource`, or the
    feature cache), each ``batch_size`` full. The order depends on (seed, epoch, rank, world_size) only: not on
    ``num_workers``, and a resume at ``start_batch`` continues it exactly. ``began``: (ranks, batch) of another
    world that began this epoch (an elastic resume from a mid-epoch checkpoint): the epoch goes on as it dealt it."""
    if began is not None and start_batch:
        return _regrouped(source, batch_size, num_batches, began, seed=seed, epoch=epoch, rank=rank,
                          num_workers=num_workers, prefetch_factor=prefetch_factor, shuffle_buffer=shuffle_buffer,
                          start_batch=start_batch, pin_memory=pin_memory, repeats=repeats)
    pieces = epoch_pieces(source.counts, batch_size * num_batches, seed=seed, epoch=epoch, rank=rank,
                          world_size=world_size, repeats=repeats)
    stream = EpochStream(source, pieces, batch_size, range(start_batch, num_batches), shuffle_buffer,
                         seeds.derive31(seed, epoch, rank, "shuffle"), None if repeats is None else (repeats, seed))
    workers = max(0, min(num_workers, num_batches - start_batch))
    # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise,
    # which would shift the dropout stream of a run resumed mid-epoch.
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=prefetch_factor if workers else None,
                      worker_init_fn=_WorkerInit(), generator=torch.Generator().manual_seed(0))


def _regrouped(source: Source, batch: int, num_batches: int, began: tuple[int, int], *, rank: int,
               **epoch: Any) -> Iterator[tuple[torch.Tensor, ...]]:
    """This rank's share of an epoch that ``ranks`` ranks of ``old_batch`` began (the same global batch as this
    world's, :func:`serwild.trainer.resume.continuation`): each global batch is their batches side by side in rank
    order, and rank r takes samples ``[r * batch, (r + 1) * batch)`` of it, reading just the old streams its span
    overlaps. So the epoch ends on exactly the old world's samples and global batches; only the rounding of the
    gradient's mean and the dropout masks differ."""
    ranks, old_batch = began
    lo, hi = rank * batch, (rank + 1) * batch
    mine = [r for r in range(ranks) if r * old_batch < hi and (r + 1) * old_batch > lo]
    base = mine[0] * old_batch
    old = [epoch_loader(source, old_batch, num_batches, rank=r, world_size=ranks, **epoch) for r in mine]
    for parts in zip(*old):
        yield tuple(torch.cat(column)[lo - base:hi - base] for column in zip(*parts))


class _WorkerInit:
    """A DataLoader worker's set-up (picklable: workers may be spawned, not forked)."""

    def __call__(self, worker_id: int) -> None:
        # Decoding is single-image work: one thread per worker avoids oversubscribing cores.
        torch.set_num_threads(1)


def make_eval_loader(urls: Sequence[str], batch_size: int, num_workers: int, rank: int = 0,
                     world_size: int = 1, counts: Sequence[int] | None = None, *, classes: Sequence[str],
                     as_uint8: bool = False, pin_memory: bool = False, remote: RemoteShards | None = None,
                     identities: Sequence[dict[str, Any]] | None = None
                     ) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[dict]]]:
    """Every sample of ``urls`` exactly once across ranks: ``(images, labels, metas)`` batches, the last maybe
    short; shards are dealt to ranks (``urls[rank::world_size]``), then to workers, and a rank with none yields
    nothing. ``counts`` (the manifest's) turns on the short-shard check, ``identities`` the check that every sample
    belongs to the record it was listed under, ``classes`` (index order) the check of its label."""
    if counts is not None and len(counts) != len(urls):
        raise ValueError("counts must give one count per url")
    if identities is not None and len(identities) != len(urls):
        raise ValueError("identities must give one identity per url")
    mine = list(urls)[rank::world_size]
    if not mine:
        return []
    expected = dict(zip(urls, counts)) if counts is not None else {}
    workers = min(max(0, num_workers), len(mine))
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.split_by_worker,
        wds.pipelinefilter(read_shards)(expected, remote),
        wds.map(_Decode(classes, as_uint8, dict(zip(urls, identities)) if identities is not None else None)),
        wds.batched(batch_size, collation_fn=collate_eval, partial=True),
    )
    # Its own generator, as the training loader's: scoring (validation, the feature cache) must not
    # move the dropout stream, or a run's weights would depend on whether its cache existed.
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         prefetch_factor=2 if workers else None, worker_init_fn=_WorkerInit(),
                         generator=torch.Generator().manual_seed(0))  # not the global RNG: see make_train_loader
