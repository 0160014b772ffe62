"""serwild.data: the reader side of a build, shared by the trainer and the evaluator.

``manifest`` reads and checks a build's manifest.json and shards (no torch: cheap to import),
``transforms`` is the one image transform, ``loaders`` streams shards into batches.
``build`` opens a build anywhere (folder, file://, http(s)://, s3://) for reusers and for
the trainer and evaluator; ``remote`` is its one transport (timeouts, retries, the path guard,
the one shard verifier); ``publish`` uploads a build; ``records`` types a manifest's shard entry.

    from serwild.data import open_build
    build = open_build("https://host/prefix/")     # or a folder
    batches = build.loader("ahsn", "test", ["clean"], batch_size=32)

Importing this package does not import torch (``serwild verify`` relies on it).
"""

from serwild.data.build import Build, open_build
from serwild.data.fetch import RemoteError, RemoteOptions

__all__ = ["Build", "RemoteError", "RemoteOptions", "open_build"]
