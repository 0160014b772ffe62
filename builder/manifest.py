"""Writing a build's manifest.json: the record readers check every shard against.

Reading and checking it is :mod:`serwild.data.manifest` (the reader side, shared by the
trainer, the evaluator and ``serwild verify``).
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections import defaultdict
from importlib import metadata
from typing import Any

from serwild import __version__
from serwild.builder.corpus import DATASETS, Reject
from serwild.builder.plan import condition_name
from serwild.builder.scan import ScannedUtterance
from serwild.config import Config, to_dict
from serwild.data.manifest import FORMAT

PACKAGES = ("numpy", "librosa", "soundfile", "pillow", "matplotlib", "webdataset", "ray", "scikit-learn")


def fingerprint(shards: list[dict], datasets: dict[str, Any]) -> str:
    """sha256 over what defines the data (shard paths, counts, hashes, classes), not over
    run details such as worker counts, so identical builds share a fingerprint."""
    core = [[s["path"], s["count"], s["sha256"]] for s in sorted(shards, key=lambda s: s["path"])]
    return hashlib.sha256(json.dumps([core, datasets], sort_keys=True).encode()).hexdigest()


def counts_table(shards: list[dict]) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """dataset → split → condition → class → samples."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int))))
    for s in shards:
        for cls, n in s["class_counts"].items():
            table[s["dataset"]][s["split"]][s["condition"]][cls] += n
    return json.loads(json.dumps(table))


def versions() -> dict[str, str]:
    out = {"serwild": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def make_manifest(cfg: Config, records: list[dict], rejects: list[Reject],
                  scanned: list[ScannedUtterance]) -> dict[str, Any]:
    datasets = {d: {"classes": list(DATASETS[d])} for d in cfg.datasets}
    conditions = {condition_name(s): s for s in [None, *cfg.snr_db]}
    shards = sorted(records, key=lambda r: r["path"])
    return {
        "format": FORMAT,
        "fingerprint": fingerprint(shards, datasets),
        "datasets": datasets,
        "conditions": conditions,
        "image": {"format": "png (palette: matplotlib jet)", "height": 1 + cfg.audio.n_fft // 2,
                  "width": 1 + int(round(cfg.audio.block_seconds * cfg.audio.sample_rate)) // cfg.audio.hop_length,
                  "channels": 3, "low_frequencies": "bottom"},
        "totals": {"shards": len(shards), "samples": sum(r["count"] for r in shards),
                   "utterances_used": len(scanned), "rejects": len(rejects)},
        "counts": counts_table(shards),
        "config": to_dict(cfg),
        "versions": versions(),
        "shards": shards,
    }
