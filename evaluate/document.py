"""metrics.json, the evaluation report, as a typed document: :class:`Report`.

``serwild evaluate`` writes it (:func:`serwild.evaluate.report.write_report`); ``compare``,
``export``, ``reproduce`` and the health checks read it with :func:`read_report`, and nothing
reads the file by string key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from serwild.errors import UsageError

REPORT_FORMAT = "serwild-report/1"


def condition_label(name: str, snr_db: float | None) -> str:
    """``clean``, or a noisy condition by its SNR (``15 dB``)."""
    return name if snr_db is None else f"{snr_db:g} dB"


def order_conditions(conditions: Mapping[str, Any]) -> list[str]:
    """Clean first, then ascending SNR (the paper's order: clean, 15, 20, 40 dB). Each value is a
    condition's SNR (None: clean), or its metrics (holding ``snr_db``)."""
    snr = {c: v.get("snr_db") if isinstance(v, Mapping) else v for c, v in conditions.items()}
    return sorted(snr, key=lambda c: (snr[c] is not None, snr[c] or 0.0, c))


@dataclass(frozen=True, kw_only=True)
class Report:
    """metrics.json, typed: one writer (:func:`write_report`), one reader (:func:`read_report`)."""

    format: str = REPORT_FORMAT
    run: str  # the run folder's name
    checkpoint: str | None = None
    shards: str | None = None  # the build scored: a folder or its URL
    manifest_fingerprint: str | None = None
    dataset: str | None = None
    classes: list[str]
    protocol: dict[str, Any] = field(default_factory=dict)  # the split and the run's choices (evaluate.protocol)
    world_size: int | None = None
    device: str | None = None
    sha256_checked: bool | None = None
    serwild_version: str | None = None
    versions: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None  # provenance.training_budget
    smoke_note: str | None = None
    uncertainty: dict[str, Any] | None = None  # how the intervals were drawn; None with eval.bootstrap=0
    # condition → {"snr_db", "shards", "samples", "block": one unit's metrics, "utterance": …}
    conditions: dict[str, dict[str, Any]]
    flags: dict[str, Any] | None = None  # health.model_flags

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """From metrics.json's object; keys this version does not know are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def read_report(path: Path, what: str = "") -> Report:
    """A metrics.json written by ``serwild evaluate``; one UsageError otherwise (``what``: whose)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{what}{path} is not readable JSON ({e})") from None
    if not (isinstance(data, dict) and isinstance(data.get("conditions"), dict) and {"run", "classes"} <= set(data)):
        raise UsageError(f"{what}{path} is not a serwild evaluate report")
    return Report.from_dict(data)
