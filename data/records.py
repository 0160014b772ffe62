"""What a manifest says about one shard, typed, and how a tar member names its sample.

Shared by every reader in ``serwild.data``, the feature cache and the builder, so that the rule "a sample's key is
the member's file name up to its first dot" is written once. No torch here, and no import of the rest of
``serwild.data`` (no cycles).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def sample_key(member_name: str) -> str:
    """``ahsn/test/Ses01F_x.png`` → ``Ses01F_x``: the key webdataset groups members by
    (file name up to the first dot; the folder part is not part of our keys)."""
    return member_name.rsplit("/", 1)[-1].split(".", 1)[0]


@dataclass(frozen=True)
class ShardRecord:
    """One shard of a build, from the builder's task to every reader: an entry of the
    manifest's ``shards`` list, in the order its fields are written there."""

    path: str  # relative to the build
    dataset: str
    split: str
    fold: int | None
    condition: str
    count: int  # samples
    bytes: int
    sha256: str
    snr_db: float | None = None
    class_counts: dict[str, int] | None = None  # class name -> samples (the balanced sampler's input)
    digest: str | None = None  # the plan digest it was built from (what a resumed build compares)

    _ORDER = ("path", "dataset", "split", "fold", "condition", "snr_db", "count", "class_counts", "bytes",
              "sha256", "digest")

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ShardRecord:
        """From a manifest (or build log) entry that ``check_manifest`` has checked; keys a
        record does not hold (a build log's ``node`` and ``rejects``) are ignored."""
        return cls(**{f.name: record.get(f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._ORDER}

    def count_of(self, cls: str) -> int:
        return int((self.class_counts or {}).get(cls, 0))
