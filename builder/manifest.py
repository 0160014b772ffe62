"""Writing a build's manifest.json: the record readers check every shard against. Reading and checking it is
:mod:`serwild.data.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections import defaultdict
from importlib import metadata
from typing import Any

from serwild import __version__
from serwild.builder.corpus import Reject
from serwild.builder.labels import resolve_views
from serwild.builder.plan import condition_name
from serwild.builder.scan import ScannedUtterance
from serwild.config import Config, to_dict
from serwild.data.manifest import DatasetInfo, Manifest
from serwild.data.records import ShardRecord

PACKAGES = ("numpy", "librosa", "soundfile", "pillow", "matplotlib", "webdataset", "ray", "scikit-learn")


def fingerprint(shards: list[ShardRecord], datasets: dict[str, DatasetInfo]) -> str:
    """sha256 over what defines the data (shard paths, counts, hashes, classes), not over
    run details such as worker counts, so identical builds share a fingerprint."""
    core = [[s.path, s.count, s.sha256] for s in sorted(shards, key=lambda s: s.path)]
    entries = {k: v.to_dict() for k, v in datasets.items()}
    return hashlib.sha256(json.dumps([core, entries], sort_keys=True).encode()).hexdigest()


def counts_table(shards: list[ShardRecord]) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """dataset → split → condition → class → samples."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int))))
    for s in shards:
        for cls, n in (s.class_counts or {}).items():
            table[s.dataset][s.split][s.condition][cls] += n
    return json.loads(json.dumps(table))


def dataset_entries(cfg: Config, counts: dict[str, Any]) -> dict[str, DatasetInfo]:
    """``datasets`` of the manifest: each view's ordered class names, and (only when a view allowed
    it) the classes with no clean training or test sample, so the card and later stages can warn.
    Only then: the entry is part of the fingerprint, which a build without empty classes keeps."""
    out: dict[str, DatasetInfo] = {}
    for name, view in resolve_views(cfg.datasets, cfg.views).items():
        empty = {part: [c for c in view.classes if not counts.get(name, {}).get(part, {}).get("clean", {}).get(c)]
                 for part in ("train", "test")}
        out[name] = DatasetInfo(tuple(view.classes), {k: v for k, v in empty.items() if v})
    return out


def versions() -> dict[str, str]:
    out = {"serwild": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def make_manifest(cfg: Config, records: list[ShardRecord], rejects: list[Reject],
                  scanned: list[ScannedUtterance], speakers: dict[str, dict[str, list[str]]] | None = None
                  ) -> Manifest:
    """The manifest. ``speakers``: per dataset, its test and train speakers; recorded as ``split``
    (outside the fingerprint) when the split is speaker-independent (speaker, session)."""
    shards = sorted(records, key=lambda r: r.path)
    datasets = dataset_entries(cfg, counts_table(shards))
    return Manifest(
        fingerprint=fingerprint(shards, datasets),
        datasets=datasets,
        conditions={condition_name(s): s for s in [None, *cfg.snr_db]},
        image={"format": "png (palette: matplotlib jet)", "height": 1 + cfg.audio.n_fft // 2,
               "width": 1 + int(round(cfg.audio.block_seconds * cfg.audio.sample_rate)) // cfg.audio.hop_length,
               "channels": 3, "low_frequencies": "bottom"},
        totals={"shards": len(shards), "samples": sum(r.count for r in shards),
                "utterances_used": len(scanned), "rejects": len(rejects)},
        counts=counts_table(shards),
        split=({"strategy": cfg.split.strategy, "datasets": speakers}
               if speakers is not None and cfg.split.strategy in ("speaker", "session") else None),
        extra_columns=tuple(sorted({k for s in scanned for k, _ in s.utt.extra})),
        config=to_dict(cfg),
        versions=versions(),
        shards=tuple(shards),
    )
