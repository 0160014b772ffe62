"""A build's manifest as its readers see it: load it, select shards, check shards against it.

A shard listed here is complete (its sample count and sha256 are recorded), and readers refuse shards that do not
match it, since a tar cut at a file boundary otherwise reads as a valid, shorter shard (docs/building.md). No torch
here: the builder and ``serwild verify`` import this cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serwild.data.fetch import NotFound, RemoteOptions
from serwild.data.records import ShardRecord
from serwild.data.remote import Location, open_location, safe_relpath
from serwild.errors import UsageError
from serwild.text import class_names_problem

FORMAT = "serwild-shards/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset (label view) of a build: its ordered classes, and those with no clean
    training or test sample (recorded only when the view allowed it)."""

    classes: tuple[str, ...]
    empty_classes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), **({"empty_classes": self.empty_classes} if self.empty_classes else {})}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A build's manifest.json, typed: written by the builder (:meth:`to_dict`), read by
    :func:`load_manifest` (checked once, so no reader meets a missing key later)."""

    fingerprint: str
    datasets: dict[str, DatasetInfo]
    conditions: dict[str, float | None]  # name -> SNR in dB (None: clean)
    shards: tuple[ShardRecord, ...]
    image: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)  # dataset -> split -> condition -> class -> samples
    split: dict[str, Any] | None = None  # the held-out speakers of a speaker/session split
    extra_columns: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)  # the build's resolved config
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the order the builder has always written them."""
        return {"format": FORMAT, "fingerprint": self.fingerprint,
                "datasets": {k: v.to_dict() for k, v in self.datasets.items()}, "conditions": self.conditions,
                "image": self.image, "totals": self.totals, "counts": self.counts,
                **({"split": self.split} if self.split is not None else {}),
                **({"extra_columns": list(self.extra_columns)} if self.extra_columns else {}),
                "config": self.config, "versions": self.versions, "shards": [r.to_dict() for r in self.shards]}

    @classmethod
    def from_dict(cls, manifest: Any, where: str) -> Manifest:
        """``manifest`` (parsed JSON) checked by :func:`check_manifest`, typed."""
        m = check_manifest(manifest, where)
        return cls(fingerprint=m["fingerprint"],
                   datasets={k: DatasetInfo(tuple(v["classes"]), v.get("empty_classes") or {})
                             for k, v in m["datasets"].items()},
                   conditions=m["conditions"], shards=tuple(ShardRecord.from_dict(r) for r in m["shards"]),
                   image=m.get("image") or {}, totals=m.get("totals") or {}, counts=m.get("counts") or {},
                   split=m.get("split"), extra_columns=tuple(m.get("extra_columns") or ()),
                   config=m.get("config") or {}, versions=m.get("versions") or {})

    def classes(self, dataset: str) -> list[str]:
        return list(self.datasets[dataset].classes)

    @property
    def samples(self) -> int:
        return sum(r.count for r in self.shards)

    def select(self, dataset: str, split: str, conditions: Sequence[str] | None = None,
               folds: Sequence[int] | None = None) -> list[ShardRecord]:
        """The shard records of one dataset/split, optionally only some conditions and folds."""
        if dataset not in self.datasets:
            raise UsageError(f"dataset {dataset!r} is not in this build (built: {', '.join(self.datasets)})")
        missing = [c for c in conditions or [] if c not in self.conditions]
        if missing:
            raise UsageError(f"condition(s) {', '.join(missing)} not in this build "
                             f"(built: {', '.join(self.conditions)})")
        return [s for s in self.shards
                if s.dataset == dataset and s.split == split
                and (conditions is None or s.condition in conditions) and (folds is None or s.fold in folds)]

    def train_folds(self, dataset: str) -> list[int]:
        """The cross-validation folds the build's training shards of ``dataset`` carry."""
        return sorted({s.fold for s in self.shards
                       if s.dataset == dataset and s.split == "train" and s.fold is not None})


def load_manifest(build: str | os.PathLike[str] | Location, options: RemoteOptions | None = None) -> Manifest:
    """manifest.json of a build (a folder, or any location :func:`~serwild.data.remote.open_location`
    takes), read once (at most ``MAX_METADATA_BYTES``) and checked by
    :func:`check_manifest`: one line naming it if it is missing, too big, not JSON, or malformed."""
    source = build if isinstance(build, Location) else open_location(build, options)
    where = source.join(MANIFEST)
    try:
        raw = source.read_bytes(MANIFEST)
    except NotFound:
        raise NotFound(f"{where} not found: is {source.location} a finished `serwild build` output?") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{where} is not readable JSON ({e})") from None
    return Manifest.from_dict(manifest, where)


_SHA256 = re.compile(r"[0-9a-f]{64}")
# Every shard record's fields a reader uses, with their types (a bool is not a count).
_RECORD: dict[str, tuple[type, ...]] = {"path": (str,), "dataset": (str,), "split": (str,),
                                        "fold": (int, type(None)), "condition": (str,), "count": (int,),
                                        "bytes": (int,), "sha256": (str,)}


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if its structure is what every reader relies on, else one UsageError line naming ``where`` and
    the first bad key. Every shard path must stay inside the build (``safe_relpath``: no '..', no absolute path), so
    a manifest can never make a reader open a file outside its build. Checked once, here: a reader never meets a
    missing key later (after an epoch of training, or a whole evaluation)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UsageError(f"{where}: format {found!r}, expected {FORMAT!r}")
    fingerprint = manifest.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise UsageError(f"{where}: 'fingerprint' must be the build's fingerprint (text), got {fingerprint!r}")
    _check_optional_parts(manifest, where)
    datasets, conditions, shards = (manifest.get(k) for k in ("datasets", "conditions", "shards"))
    if not isinstance(datasets, dict) or not datasets:
        raise UsageError(f"{where}: 'datasets' must map each dataset to its classes")
    for name, d in datasets.items():
        problem = class_names_problem(d.get("classes") if isinstance(d, dict) else None)
        if problem is not None:
            raise UsageError(f"{where}: datasets.{str(name)[:80]}.classes {problem}")
        if not isinstance(d.get("empty_classes") or {}, dict):
            raise UsageError(f"{where}: datasets.{str(name)[:80]}.empty_classes must map a part to its classes")
    if not isinstance(conditions, dict) or not conditions:
        raise UsageError(f"{where}: 'conditions' must map each condition to its SNR (null for clean)")
    for name, snr in conditions.items():
        if snr is not None and (isinstance(snr, bool) or not isinstance(snr, (int, float))):
            raise UsageError(f"{where}: conditions.{name} must be a number or null, got {snr!r}")
    if not isinstance(shards, list):
        raise UsageError(f"{where}: 'shards' must be a list of shard records")
    paths: dict[str, int] = {}
    for i, r in enumerate(shards):
        _check_record(i, r, where, datasets, conditions)
        if (first := paths.setdefault(r["path"], i)) != i:  # training would read it twice per epoch
            raise UsageError(f"{where}: shard record {i} lists {r['path']} again (first as record {first})")
    return manifest


def _check_record(i: int, r: Any, where: str, datasets: dict, conditions: dict) -> None:
    """Shard record ``i``: its fields and types, a path inside the build, a sha256, and a dataset
    and condition the manifest lists."""
    if not isinstance(r, dict):
        raise UsageError(f"{where}: shard record {i} is not a mapping")
    for key, types in _RECORD.items():
        if key not in r:
            raise UsageError(f"{where}: shard record {i} lacks {key!r}")
        v = r[key]
        if not isinstance(v, types) or isinstance(v, bool) or (isinstance(v, int) and v < 0):
            raise UsageError(f"{where}: shard record {i}: {key!r} has a bad value {v!r}")
    counts = r.get("class_counts")
    if counts is not None and not (isinstance(counts, dict) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values())):
        raise UsageError(f"{where}: shard record {i}: 'class_counts' must map each class to a count")
    try:
        safe_relpath(r["path"])
    except UsageError as e:
        raise UsageError(f"{where}: shard record {i}: {e}") from None
    if not _SHA256.fullmatch(r["sha256"]):
        raise UsageError(f"{where}: shard record {i} ({r['path']}): 'sha256' is not 64 hex digits")
    for key, known in (("dataset", datasets), ("condition", conditions)):
        if r[key] not in known:
            raise UsageError(f"{where}: shard record {i} ({r['path']}): {key} {r[key]!r} is not in "
                             f"the manifest's {key}s ({', '.join(map(str, known))})")


def _check_optional_parts(manifest: dict[str, Any], where: str) -> None:
    """``config`` (with ``split`` and its ``strategy``), ``totals`` and the other optional parts the
    typed :class:`Manifest` holds: absent, or of the type readers expect."""
    config = manifest.get("config", {})
    if not isinstance(config, dict):
        raise UsageError(f"{where}: 'config' must be a mapping (the build's resolved config), got "
                         f"{type(config).__name__}")
    split = config.get("split", {})
    if not isinstance(split, dict):
        raise UsageError(f"{where}: config.split must be a mapping, got {type(split).__name__}")
    if not isinstance(split.get("strategy", ""), str):
        raise UsageError(f"{where}: config.split.strategy must be text, got {split['strategy']!r}")
    totals = manifest.get("totals", {})
    if not isinstance(totals, dict):
        raise UsageError(f"{where}: 'totals' must be a mapping of counts, got {type(totals).__name__}")
    for key, v in totals.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UsageError(f"{where}: totals.{key} must be a count, got {v!r}")
    for key in ("image", "counts", "versions", "split"):
        if not isinstance(manifest.get(key) or {}, dict):
            raise UsageError(f"{where}: '{key}' must be a mapping, got {type(manifest[key]).__name__}")
    extra = manifest.get("extra_columns") or []
    if not isinstance(extra, list) or not all(isinstance(c, str) for c in extra):
        raise UsageError(f"{where}: 'extra_columns' must be a list of column names, got {extra!r:.80}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
