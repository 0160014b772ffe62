"""Streaming input: manifest → shard URLs → WebDataset pipelines for training and evaluation.

Training (``make_train_loader``) reads *resampled* shards — every rank and worker draws
shards at random, with replacement, from the whole list — and stops after exactly
``num_batches`` batches. So every rank runs the same number of steps whatever the shard
count (one shard for two ranks, three for two, odd sample counts): the DDP hangs of
webdataset issues #188/#194/#225 cannot happen. Shards are shuffled as PNG bytes and only
decoded after the shuffle buffer; images travel as uint8 and are normalised on the device.

Evaluation (``make_eval_loader``) reads each sample exactly once: shards are dealt to
ranks, then to workers; a rank with no shard yields nothing (and returns at once).

Both refuse a short or corrupt shard: a tar error, a sample that is not a PNG + JSON pair,
or a shard whose sample count differs from the manifest's raises instead of training or
scoring on a silently shorter set (a tar cut at a member boundary reads as valid).

Shards may be URLs of a remote build (``serwild.data.open_build``): a ShardSet made from
one carries the build's network options, and both loaders then route webdataset's http(s)
and pipe: reads through serwild's opener (timeouts, retries, resume) in this process and
again in every DataLoader worker (a spawned worker starts without it). A read that fails
after the retries raises :class:`~serwild.data.remote.RemoteError`, naming the URL.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import default_collate

from serwild import seeds
from serwild.data.remote import Build, RemoteError, RemoteOptions, open_location, register_wds_opener
from serwild.data.transforms import normalise, resize_uint8
from serwild.errors import UsageError


class ShardError(UsageError):
    """A shard that does not match the manifest (short, corrupt, wrong content)."""

    def __str__(self) -> str:
        text = super().__str__()
        # Re-raised from a DataLoader worker, the message is the whole worker traceback:
        # keep its last line, the original one-line message.
        if "Original Traceback" in text:
            return text.strip().splitlines()[-1].split(": ", 1)[-1]
        return text


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs with their manifest sample counts (what the count check compares with),
    and the network options of a remote build (None: local files)."""

    urls: list[str]
    counts: list[int]
    remote: RemoteOptions | None = None

    @property
    def samples(self) -> int:
        return sum(self.counts)


def shard_set(build: str | Path | Build | Any, records: Sequence[dict]) -> ShardSet:
    """Manifest records (``select_shards``) → URLs under ``build`` + their counts.

    ``build``: a folder, or a build opened by ``open_location``/``open_build`` (its shard
    URLs are joined to its base, never leaving it; a remote one lends its options)."""
    source = getattr(build, "source", build)  # a BuildReader (serwild.data.build) holds its Build
    if not isinstance(source, Build):
        source = open_location(source)
    return ShardSet(source.shard_urls(list(records)), [int(r["count"]) for r in records],
                    source.options if source.is_remote else None)


# ----------------------------------------------------------------------------- pipeline stages


def read_shards(shards: Iterable[dict], expected: dict[str, int]) -> Iterator[dict]:
    """Shard stream (``dict(url=…)``) → samples, raising ShardError when a shard read to its
    end holds another number of samples than the manifest says.

    Each shard is expanded on its own, so the same shard drawn twice in a row (resampling)
    is still counted twice. A stream cut off mid-shard (``islice``/``with_epoch``) closes
    this generator at a ``yield`` and never reaches that shard's check.
    """
    for shard in shards:
        n, url = 0, shard["url"]
        samples = wds.tarfile_samples([shard])
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except RemoteError as e:  # the network, not the shard: its own one line, naming the URL
                raise RemoteError(str(e)) from None
            except (tarfile.TarError, OSError, ValueError) as e:  # a damaged tar, not a bug of ours
                raise ShardError(f"shard {url} is corrupt after {n} samples ({type(e).__name__}: {e})") from None
            n += 1
            yield sample
        if url in expected and n != expected[url]:
            raise ShardError(f"shard {url} holds {n} samples, the manifest says {expected[url]}: "
                             f"it is short or corrupt (run `serwild verify` on the build)")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (palette or RGB) → (H, W, 3) uint8, as webdataset's ``rgb8`` would."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def decode_sample(sample: dict, num_classes: int, as_uint8: bool = False) -> tuple[torch.Tensor, int, dict]:
    """A raw sample → (image (3, 256, 256), class index, metadata).

    The image is normalised float, or uint8 when ``as_uint8`` (a GPU normalises the batch
    on arrival: a quarter of the bytes to move). On a CPU, normalising image by image here
    is several times faster than normalising a whole batch later (cache-sized tensors).
    """
    key = sample.get("__key__")
    if "png" not in sample or "json" not in sample:
        raise ShardError(f"sample {key} in {sample.get('__url__')} lacks a png or json member "
                         f"(has {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        meta = json.loads(sample["json"])
        rgb = decode_png(sample["png"])
    except (ValueError, OSError, SyntaxError) as e:  # PIL raises these for damaged PNGs
        raise ShardError(f"sample {key} in {sample.get('__url__')} does not decode "
                         f"({type(e).__name__}: {e})") from None
    label = meta.get("class_index")
    if not isinstance(label, int) or not 0 <= label < num_classes:
        raise ShardError(f"sample {key} in {sample.get('__url__')}: class_index {label!r} is not in "
                         f"0..{num_classes - 1}")
    image = resize_uint8(rgb)
    return (image if as_uint8 else normalise(image)), label, meta


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

    def __init__(self, num_classes: int, as_uint8: bool) -> None:
        self.num_classes, self.as_uint8 = num_classes, as_uint8

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int, dict]:
        return decode_sample(sample, self.num_classes, self.as_uint8)


# ----------------------------------------------------------------------------- loaders


def steps_per_epoch(samples_per_epoch: int, batch_per_rank: int, world_size: int) -> int:
    """Batches every rank runs per epoch: enough for ``samples_per_epoch`` samples overall."""
    return max(1, math.ceil(samples_per_epoch / (batch_per_rank * world_size)))


def make_train_loader(shards: ShardSet, num_classes: int, batch_size: int, num_batches: int, *,
                      seed: int, epoch: int, rank: int = 0, num_workers: int = 0,
                      prefetch_factor: int = 2, shuffle_buffer: int = 1000,
                      pin_memory: bool = False, as_uint8: bool = False
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Exactly ``num_batches`` batches of ``batch_size``: (images (B, 3, 256, 256), labels).

    Images are normalised float, or uint8 with ``as_uint8`` (normalise them on the device).

    Shards are resampled with a seed from (seed, epoch, rank, worker): deterministic, so a
    resumed run sees the same data order, and different on every rank and worker.
    """
    if not shards.urls:
        raise UsageError("no training shards selected (check train.dataset, train.conditions, cv.fold)")
    workers = max(0, num_workers)
    per_worker = math.ceil(num_batches / max(1, workers))
    if shards.remote is not None:
        register_wds_opener(shards.remote)
    pipeline = wds.DataPipeline(
        # worker_seed: webdataset's default, rank * 1000 + worker (rank from torchrun's env)
        wds.ResampledShards(shards.urls, seed=seeds.derive31(seed, epoch), deterministic=True),
        wds.pipelinefilter(read_shards)(dict(zip(shards.urls, shards.counts))),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100),
                    seed=seeds.derive31(seed, epoch, rank, "shuffle")),
        wds.map(_Decode(num_classes, as_uint8)),
        wds.batched(batch_size, collation_fn=collate_train, partial=False),
    ).with_epoch(per_worker)  # per worker; the loader below takes exactly num_batches in turn
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                           prefetch_factor=prefetch_factor if workers else None,
                           persistent_workers=False, worker_init_fn=_WorkerInit(shards.remote))
    return islice(iter(loader), num_batches)


class _WorkerInit:
    """A DataLoader worker's set-up (picklable: workers may be spawned, not forked)."""

    def __init__(self, remote: RemoteOptions | None = None) -> None:
        self.remote = remote

    def __call__(self, worker_id: int) -> None:
        # Decoding is single-image work: one thread per worker avoids oversubscribing cores.
        torch.set_num_threads(1)
        if self.remote is not None:  # a spawned worker has webdataset's own openers again
            register_wds_opener(self.remote)



def make_eval_loader(urls: Sequence[str], batch_size: int, num_workers: int, rank: int = 0,
                     world_size: int = 1, counts: Sequence[int] | None = None, num_classes: int = 1000,
                     as_uint8: bool = False, pin_memory: bool = False, remote: RemoteOptions | None = None
                     ) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[dict]]]:
    """Every sample of ``urls`` exactly once across ranks: ``(images, labels, metas)`` batches.

    Shards are dealt to ranks (``urls[rank::world_size]``), then to workers; no shuffling,
    no resampling, last batch may be short. ``counts`` (the manifest's, per URL) turns on the
    short-shard check; images are float and normalised unless ``as_uint8``. A rank with no
    shard yields nothing. ``num_classes`` bounds the labels (the manifest's class count).
    ``remote``: the build's network options when ``urls`` are remote (``ShardSet.remote``).
    """
    if counts is not None and len(counts) != len(urls):
        raise ValueError("counts must give one count per url")
    mine = list(urls)[rank::world_size]
    if not mine:
        return []
    expected = dict(zip(urls, counts)) if counts is not None else {}
    workers = min(max(0, num_workers), len(mine))
    if remote is not None:
        register_wds_opener(remote)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.split_by_worker,
        wds.pipelinefilter(read_shards)(expected),
        wds.map(_Decode(num_classes, as_uint8)),
        wds.batched(batch_size, collation_fn=collate_eval, partial=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         prefetch_factor=2 if workers else None, worker_init_fn=_WorkerInit(remote))
