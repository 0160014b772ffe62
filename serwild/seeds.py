"""Every seed serwild derives, from one rule: a stable hash of the parts that name a stream.

Python's ``hash()`` of a string is salted per process, so seeds come from sha256 instead:
the same (seed, dataset, key) gives the same noise draw in every Ray worker, and the same
(seed, epoch, rank) gives the same data order after a resume.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np

# The per-rank streams (dropout, shuffling) of a run are seeds.derive(cfg.seed, ROLE, rank…):
INIT = "init"  # the initial weights, identical on every rank
RANK = "rank"  # dropout on one rank, fresh run
RESUMED = "resumed"  # dropout on one rank after a resume with another world size


def derive(*parts: object) -> int:
    """A 64-bit seed naming one random stream, stable across processes and machines."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def derive31(*parts: object) -> int:
    """:func:`derive` cut to 31 bits, for APIs that want a small int (webdataset, torch workers)."""
    return derive(*parts) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and every GPU) from one seed."""
    import torch  # here: the builder imports this module and must not load torch in Ray workers

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
