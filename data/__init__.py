"""serwild.data: the reader side of a build, shared by the trainer and the evaluator.

    from serwild.data import open_build
    build = open_build("https://host/prefix/")     # or a folder
    batches = build.loader("ahsn", "test", ["clean"], batch_size=32)

Importing this package does not import torch (``serwild verify`` relies on it). Its modules: docs/architecture.md.
"""

from serwild.data.build import Build, open_build
from serwild.data.fetch import RemoteError, RemoteOptions

__all__ = ["Build", "RemoteError", "RemoteOptions", "open_build"]
