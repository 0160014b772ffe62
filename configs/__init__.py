"""Shipped configs (``serwild.configs``): installed with the package so ``serwild demo``
finds its default config from any folder, not only from a source checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def shipped(name: str) -> Path:
    """The installed path of a shipped config, e.g. ``shipped("demo.yaml")``."""
    return Path(str(resources.files(__name__) / name))
