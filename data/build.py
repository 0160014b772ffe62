"""A published build, opened one way wherever it lives (a folder, ``file:///…``, ``http(s)://``, ``s3://``…): what
the trainer, the evaluator and reusers read. Locations, the cache and publishing: docs/publishing.md.

    build = open_build("https://huggingface.co/datasets/<user>/<repo>/resolve/main/")
    assert build.verify() == []                       # every shard streamed once: sha256 + count
    for images, labels, metas in build.loader("ahsn", "test", ["clean"], batch_size=32):
        ...                                            # (B, 3, 256, 256) normalised, (B,), dicts

No torch at import time: ``serwild verify`` imports this module, and must stay cheap; the webdataset loaders (which
import torch) are imported inside :meth:`Build.loader`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serwild.data.fetch import RemoteOptions
from serwild.data.manifest import Manifest, load_manifest
from serwild.data.records import ShardRecord
from serwild.data.remote import Location, open_location

if TYPE_CHECKING:  # no torch at import time (see the module docstring)
    import torch

    from serwild.data.loaders import ShardSet


@dataclass(frozen=True)
class Build:
    """An opened build: where it is (``source``) and its checked manifest."""

    source: Location
    manifest: Manifest

    @property
    def location(self) -> str:
        """The build as the user named it (a URL stays a URL: never pass it through Path)."""
        return self.source.location

    @property
    def is_remote(self) -> bool:
        return self.source.is_remote

    @property
    def options(self) -> RemoteOptions:
        return self.source.options

    def classes(self, dataset: str) -> list[str]:
        return self.manifest.classes(dataset)

    def records(self, dataset: str, split: str, conditions: Sequence[str] | None = None,
                folds: Sequence[int] | None = None) -> list[ShardRecord]:
        """The manifest's shard records of one dataset/split (some conditions, folds)."""
        return self.manifest.select(dataset, split, conditions, folds)

    def shard_urls(self, records: Iterable[ShardRecord]) -> list[str]:
        """URLs (or paths) of ``records`` under the base."""
        return self.source.shard_urls(list(records))

    def shard_set(self, records: Sequence[ShardRecord]) -> ShardSet:
        """``records`` as the loaders want them: URLs, manifest counts, network options."""
        from serwild.data.loaders import shard_set  # torch: see the module docstring

        return shard_set(self, records)

    def check(self, records: Sequence[ShardRecord], full: bool = True) -> list[str]:
        """Problems with ``records`` (empty: all good), by the one verifier (:meth:`Location.check`): ``full``
        checks size, sha256 and sample count, otherwise sizes only (stat, HTTP HEAD, an object's info)."""
        return self.source.verify(list(records), full=full)

    def verify(self, full: bool = True) -> list[str]:
        """Every shard of the manifest checked (see :meth:`check`); for a folder, also tar
        files the manifest does not list ("extra: …"), which a URL cannot reveal."""
        problems = self.check(self.manifest.shards, full=full)
        if not self.is_remote:
            listed, root = {s.path for s in self.manifest.shards}, Path(self.source.base)
            problems += [f"extra: {p} (not in the manifest)"
                         for p in sorted(str(t.relative_to(root)) for t in root.rglob("*.tar")) if p not in listed]
        return problems

    def loader(self, dataset: str, split: str, conditions: Sequence[str] | None = None, batch_size: int = 32, *,
               folds: Sequence[int] | None = None, num_workers: int = 0, as_uint8: bool = False, rank: int = 0,
               world_size: int = 1) -> Iterable[tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]]:
        """Every sample of the selection exactly once, in manifest order: batches of
        ``(images (B, 3, 256, 256), labels (B,), metadata dicts)``, the last maybe short; images are normalised, or
        uint8 with ``as_uint8``. A shard whose sample count differs from the manifest's raises, as does a network
        failure after the retries (:class:`~serwild.data.fetch.RemoteError`)."""
        from serwild.data.loaders import make_eval_loader  # torch: see the module docstring

        shards = self.shard_set(self.records(dataset, split, conditions, folds))
        return make_eval_loader(shards.urls, batch_size, num_workers, rank=rank, world_size=world_size,
                                counts=shards.counts, classes=self.classes(dataset), as_uint8=as_uint8,
                                remote=shards.remote, identities=shards.identities)


def open_build(location: str | os.PathLike[str] | Location | Build,
               options: RemoteOptions | None = None) -> Build:
    """Open a build (a folder or a URL) and read and check its manifest.json: one line naming the location if it is
    missing or malformed. A ``Location`` (from ``open_location``) or a ``Build`` is used as it is."""
    if isinstance(location, Build):
        return location
    source = location if isinstance(location, Location) else open_location(location, options)
    return Build(source, load_manifest(source))
