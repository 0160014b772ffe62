"""What a manifest says about one shard, typed, and how a tar member names its sample.

Shared by every reader in ``serwild.data`` (the verifier, the loaders) and the feature cache,
so that the rule "a sample's key is the member's file name up to its first dot" is written
once. No torch here, and no import of the rest of ``serwild.data`` (no cycles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def sample_key(member_name: str) -> str:
    """``ahsn/test/Ses01F_x.png`` → ``Ses01F_x``: the key webdataset groups members by
    (file name up to the first dot; the folder part is not part of our keys)."""
    return member_name.rsplit("/", 1)[-1].split(".", 1)[0]


@dataclass(frozen=True)
class ShardRecord:
    """One entry of a manifest's ``shards`` list (checked by ``check_manifest`` first)."""

    path: str
    dataset: str
    split: str
    fold: int | None
    condition: str
    count: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, record: ShardRecord | dict[str, Any]) -> ShardRecord:
        """A record as it is, or made from a manifest dict (extra keys such as class_counts ignored)."""
        if isinstance(record, ShardRecord):
            return record
        return cls(record["path"], record["dataset"], record["split"], record["fold"], record["condition"],
                   int(record["count"]), int(record["bytes"]), record["sha256"])
