"""Frozen-feature cache: compute AlexNet's frozen prefix once per image, train the rest
(docs/training.md says when it is on, and what it costs and saves).

- **The cut** (:func:`frozen_prefix_length`): after the ReLU that follows the last conv of the
  contiguous frozen run counted from conv1 (paper: ``features[:10]``). Only ``model.features``
  is ever cut: the classifier starts with Dropout, random in training.
- **Key** (:func:`cache_key`): sha256 over the build's fingerprint, the prefix's weights, the
  cut, the storage dtype and the image transform: a cache is never read with other data,
  weights or preprocessing.
- **Layout**: ``<cache_root>/<key>/<shard path, / → __>.pt``, one file per train or validation
  shard (``{"features": (N, C, H, W) fp16, "labels", "keys", "shard", "sha256", …}``), written
  through a temp file + rename; a re-run skips finished files. Each file is checked on every
  use against its shard's path, sha256, count and sample keys (:func:`stale_reason`).
- **A source of the one training loader** (:class:`CachedTrainData`): its rows are dealt as the
  shards' samples are, so a cached run trains on the streamed run's very batches;
  :class:`FeatureHead` is the model after the cut. Writing the files is
  :mod:`serwild.trainer.features_write` (rank r computes ``records[r::world]``).
- **fp16 storage** (10-bit mantissa, not bf16's 7): a value past 65504 stops the build with a
  message to turn the cache off; features are upcast to the head's dtype on arrival.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serwild.data.epochs import Repeats
from serwild.data.loaders import epoch_loader
from serwild.data.manifest import Manifest
from serwild.data.records import ShardRecord, sample_key
from serwild.data.transforms import IMAGE_SIZE, MEAN, STD
from serwild.errors import UsageError
from serwild.processes.checkpoint import safe_load, unreadable_reason  # one wording for every refused torch.load
from serwild.trainer.model import LAYER_MODULES

CACHE_FORMAT = 1  # bump when the file layout or the preprocessing (data.transforms) changes: new keys
CACHE_MODES = ("auto", "on", "off")
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
STORE, STORE_NAME = torch.float16, "fp16"  # the storage dtype (why fp16: the module's docstring); in every key
FILE_SUFFIX = ".pt"
INFO_FILE = "cache.json"
HOSTILE = "it holds objects other than tensors"  # how unreadable_reason starts for a refused pickle


# ----------------------------------------------------------------------------- when and where to cut


def frozen_prefix_length(freeze: Sequence[str]) -> int | None:
    """How many leading ``model.features`` modules are frozen and exact to precompute.

    The cut sits after the ReLU that follows the last conv of the contiguous frozen run from
    conv1: conv1 → 2, conv1–2 → 5, conv1–3 → 8, conv1–4 (the paper) → 10, conv1–5 → 12.
    None when conv1 is trained (no exact cache). fc layers never extend the prefix.
    """
    unknown = [n for n in freeze if n not in LAYER_MODULES]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; known: {', '.join(LAYER_MODULES)}")
    frozen = set(freeze)
    last = None
    for conv in CONVS:
        if conv not in frozen:
            break
        last = conv
    if last is None:
        return None
    index = int(LAYER_MODULES[last].split(".")[1])  # "features.8" → 8
    return index + 2  # the conv and the ReLU after it


def resolve_feature_cache(mode: str, freeze: Sequence[str]) -> int | None:
    """``train.feature_cache`` → the cut to cache at, or None for the streaming path.

    ``auto``: cache where it is exact (a frozen prefix from conv1); ``on``: the same, but an
    error where it would not be exact; ``off``: never.
    """
    if mode not in CACHE_MODES:
        raise UsageError(f"train.feature_cache={mode!r}: choose {' | '.join(CACHE_MODES)}")
    if mode == "off":
        return None
    prefix = frozen_prefix_length(freeze)
    if prefix is None and mode == "on":
        raise UsageError("train.feature_cache=on but cached features would not be exact: conv1 is trained "
                         "(train.freeze has no conv1); use train.feature_cache=auto or off")
    return prefix


def check_prefix(model: nn.Module, prefix: int) -> nn.Sequential:
    """``model.features`` (the unwrapped AlexNet's: the trainer never hands a DDP wrapper here)."""
    features = model.features
    if not 0 < prefix <= len(features):
        raise ValueError(f"prefix {prefix} is outside 1..{len(features)} (AlexNet's features)")
    return features


def weights_digest(model: nn.Module, prefix: int) -> str:
    """sha256 over the prefix's state_dict (names, dtypes, shapes, values): the weights a cache came from."""
    h = hashlib.sha256()
    for name, t in sorted(check_prefix(model, prefix)[:prefix].state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(fingerprint: str, weights_digest: str, prefix: int) -> str:
    """The cache folder name: ``p<cut>-fp16-<sha256[:20]>`` of everything the features depend on."""
    what = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "weights": weights_digest, "prefix": prefix,
            "dtype": STORE_NAME, "transform": {"size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD)}}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    return f"p{prefix}-{STORE_NAME}-{digest[:20]}"


@dataclass(frozen=True)
class CacheSpec:
    """One cache: where it lives, its key, and what it was made from."""

    root: Path  # cache_root (many caches side by side)
    key: str
    prefix: int
    fingerprint: str
    weights: str  # weights_digest of the prefix

    @property
    def dir(self) -> Path:
        return self.root / self.key


def cache_spec(cache_root: str | Path, fingerprint: str, model: nn.Module, prefix: int) -> CacheSpec:
    """The cache for ``model``'s first ``prefix`` feature modules on the build ``fingerprint``."""
    digest = weights_digest(model, prefix)
    return CacheSpec(Path(cache_root), cache_key(fingerprint, digest, prefix), prefix, fingerprint, digest)


def default_cache_root(build_dir: str | Path) -> Path:
    """Where caches live unless configured: beside the shards they came from."""
    return Path(build_dir) / "feature-cache"


def cache_records(manifest: Manifest, dataset: str) -> list[ShardRecord]:
    """Every train and validation shard record of ``dataset`` (all conditions, all folds): what
    one cache holds (never test: a cache is for training)."""
    return manifest.select(dataset, "train") + manifest.select(dataset, "validation")


def shard_cache_file(cache_dir: str | Path, record: ShardRecord) -> Path:
    """``ahsn/train/fold0/clean-000000.tar`` → ``<cache_dir>/ahsn__train__fold0__clean-000000.pt``."""
    name = record.path.replace("/", "__")
    return Path(cache_dir) / (name.removesuffix(".tar") + FILE_SUFFIX)


# ----------------------------------------------------------------------------- building


def tar_keys(path: str | Path) -> list[str]:
    """Sample keys of a shard in tar order (webdataset groups ``key.ext`` members)."""
    keys: list[str] = []
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if member.isfile():
                key = sample_key(member.name)
                if not keys or keys[-1] != key:
                    keys.append(key)
    return keys


class CacheFileError(UsageError):
    """A cache file that cannot be read: empty, cut, not a cache file, or holding foreign objects."""

    def __init__(self, path: Path, why: str, hostile: bool) -> None:
        advice = "delete it and run again" if hostile else "run again to rebuild it"
        super().__init__(f"feature cache file {path} {why}: {advice}")
        self.why, self.hostile = why, hostile


def read_cache_file(path: Path) -> dict[str, Any]:
    """One cache file's contents (tensors memory-mapped), read with ``weights_only=True``.

    Any failure is a :class:`CacheFileError` of one line; one that holds objects other than
    tensors and plain data is ``hostile`` (refused without running them). Never torch's advice
    to retry with ``weights_only=False``, which would run them."""
    try:
        obj = safe_load(path, mmap=True)
    except Exception as e:  # empty or cut files, zip errors, refused objects
        why = unreadable_reason(path, e)
        raise CacheFileError(path, f"is unreadable ({why})", why.startswith(HOSTILE)) from None
    if not isinstance(obj, dict) or not {"features", "labels", "keys"} <= set(obj):
        raise CacheFileError(path, "is not a feature cache file (no features, labels and keys)", False)
    return obj


def stale_reason(obj: dict[str, Any], key: str, record: ShardRecord, build_dir: str | Path | None = None) -> str | None:
    """Why the cache file contents ``obj`` do not stand for ``record`` (a manifest shard record)
    in cache ``key``; None when they do. With ``build_dir`` the sample keys are checked against
    the shard's tar too."""
    if obj.get("format") != CACHE_FORMAT or obj.get("key") != key:
        return f"belongs to another cache ({obj.get('key')}, format {obj.get('format')}), expected {key}"
    n, count = len(obj["labels"]), record.count
    if len(obj["features"]) != n or len(obj["keys"]) != n:
        return f"holds {len(obj['features'])} features, {n} labels and {len(obj['keys'])} sample keys"
    if obj.get("shard") != record.path:
        return f"holds {obj.get('shard')}, not {record.path}"
    if record.sha256 and obj.get("sha256") != record.sha256:
        return (f"was made from another version of {record.path} (sha256 {str(obj.get('sha256'))[:12]}…, "
                f"the manifest says {record.sha256[:12]}…)")
    if n != count:
        return f"holds {n} samples, the manifest says {count}"
    if build_dir is not None and list(obj["keys"]) != tar_keys(Path(build_dir) / record.path):
        return f"lists sample keys other than those of {record.path}"
    return None


class CachedTrainData:
    """Cached features of some shards: a training loader's source
    (:func:`serwild.data.loaders.epoch_loader`), and validation batches.

    Where they live: memory-mapped files (default; ranks of one node share the page cache), or,
    with ``device``, copied onto that device (a GPU: no host work per step; "cpu": a private
    copy in RAM). Batches come on that device, features in the stored dtype.

    The training loader deals a cache's rows exactly as it deals the shards' samples (one
    definition of an epoch: the same spans, shuffle buffer and balanced repeats), so a run on the
    cache trains on the very batches the same run streaming its shards would. The files must
    come in the run's shard order (``DataPlan.train_records``).
    """

    def __init__(self, files: Sequence[str | Path], key: str, records: Sequence[ShardRecord],
                 device: torch.device | str | None = None, build_dir: str | Path | None = None) -> None:
        """``records`` (the manifest's, one per file) bind each file to its shard of cache ``key``
        (:func:`stale_reason`); ``build_dir`` adds the check of sample keys against the shards' tars."""
        if len(records) != len(files):
            raise ValueError("records must give one entry per file")
        self.files = [Path(f) for f in files]
        self.feats: list[torch.Tensor] = []
        self.shard_labels: list[list[int]] = []
        self.keys: list[str] = []
        for path, record in zip(self.files, records):
            if not path.is_file():
                raise UsageError(f"feature cache file {path} is missing: build the cache first")
            obj = read_cache_file(path)
            why = stale_reason(obj, key, record, build_dir)
            if why is not None:
                raise CacheFileError(path, why, False)
            self.feats.append(obj["features"] if device is None else obj["features"].to(device))
            self.shard_labels.append(obj["labels"].tolist())
            self.keys.extend(obj["keys"])
        self.counts = [len(x) for x in self.shard_labels]

    def __len__(self) -> int:
        return sum(self.counts)

    # The source protocol of serwild.data.loaders.EpochStream: a sample is (feature row, label).
    def name(self, shard: int) -> str:
        return str(self.files[shard])

    def samples(self, shard: int) -> Iterator[tuple[torch.Tensor, int]]:
        return zip(self.feats[shard], self.shard_labels[shard])

    def label(self, sample: tuple[torch.Tensor, int]) -> int:
        return sample[1]

    def item(self, sample: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
        return sample

    def eval_batches(self, batch_size: int, rank: int = 0, world_size: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Every sample once across ranks (files dealt ``[rank::world_size]``, as the eval loader
        deals shards): (features, labels, sample keys); the last batch may be short."""
        starts = list(itertools.accumulate(self.counts, initial=0))
        for s in range(rank, len(self.feats), world_size):
            for i in range(0, self.counts[s], batch_size):
                j = min(self.counts[s], i + batch_size)
                yield (self.feats[s][i:j], torch.tensor(self.shard_labels[s][i:j], dtype=torch.long),
                       self.keys[starts[s] + i:starts[s] + j])


def load_feature_cache(spec: CacheSpec, records: Sequence[ShardRecord], device: torch.device | str | None = None,
                       build_dir: str | Path | None = None) -> CachedTrainData:
    """The cached features of ``records`` (e.g. one run's training shards), each file checked
    against the key and its shard's record (path, sha256, count; with ``build_dir`` the sample
    keys too): memory-mapped, or all in one tensor on ``device``."""
    return CachedTrainData([shard_cache_file(spec.dir, r) for r in records], spec.key, records, device=device,
                           build_dir=build_dir)


@dataclass(frozen=True)
class FeatureData:
    """The feature cache as a run's data source (the trainer's other one streams the shards): the
    cached features of its training and validation shards, which enter the model after the cut,
    so a step and validation run :meth:`net` of the model, its :class:`FeatureHead`."""

    prefix: int
    train: CachedTrainData
    val: CachedTrainData | None  # None: no validation fold
    steps: int  # batches per epoch, every rank
    seed: int  # the run's training seed: the epochs' sample order
    batch: int  # this rank's validation batch
    rank: int
    world_size: int
    shuffle_buffer: int = 1000  # train.shuffle_buffer: the streaming loader's, for the same order
    repeats: Repeats | None = None  # train.balance: sampler

    def train_batches(self, epoch: int, first: int, rank: int, world_size: int, batch: int,
                      began: tuple[int, int] | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``first`` … of rank ``rank``'s ``epoch`` (``began``: see
        :func:`~serwild.data.loaders.epoch_loader`), read from the cache in this process."""
        return epoch_loader(self.train, batch, self.steps, seed=self.seed, epoch=epoch, rank=rank,
                            world_size=world_size, start_batch=first, shuffle_buffer=self.shuffle_buffer,
                            repeats=self.repeats, began=began)

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        return iter(()) if self.val is None else self.val.eval_batches(self.batch, self.rank, self.world_size)

    def net(self, model: nn.Module) -> nn.Module:
        return head_from(model, self.prefix)


# ----------------------------------------------------------------------------- the trained rest


class FeatureHead(nn.Module):
    """AlexNet after the cut: ``features[prefix:]``, avgpool, flatten, classifier.

    Holds the original model's modules (not copies): its parameters ARE the model's, so an
    optimiser built on the model, DDP around this head, and ``model.state_dict()`` in
    checkpoints all see the same tensors. Inputs (cached fp16) are cast to the weights' dtype.
    """

    def __init__(self, model: nn.Module, prefix: int) -> None:
        super().__init__()
        features = check_prefix(model, prefix)
        trained = [n for n, p in features[:prefix].named_parameters() if p.requires_grad]
        if trained:
            raise ValueError(f"features[:{prefix}] has trained parameters ({', '.join(trained)}): "
                             f"a cache would not be exact (freeze the layers before the cut first)")
        self.prefix = prefix
        self.rest = features[prefix:]  # a new Sequential over the same module objects
        self.avgpool = model.avgpool
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.classifier[-1].weight.dtype)
        x = self.avgpool(self.rest(x))
        return self.classifier(torch.flatten(x, 1))


def head_from(model: nn.Module, prefix: int) -> FeatureHead:
    """The part of ``model`` after the cut, sharing its parameters (call after freezing)."""
    return FeatureHead(model, prefix)
