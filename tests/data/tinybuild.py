"""A tiny real build (both datasets, clean + two noisy conditions, ~2 s serially), made once
per test session and shared by the tests of this folder.

It reuses the builder tests' hand-made IEMOCAP-layout tree, at one utterance per class
per session, and builds it with ``run_build(cfg, executor="serial")`` (no Ray).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serwild.builder.build import run_build
from serwild.config import load_config
from tests.builder.conftest import make_noise, make_tree

SNR_DB = "[15,7.5]"  # 7.5 → condition "snr7p5": a name with a mangled dot in split names


def make_tiny_build(base: Path) -> Path:
    """Build into ``base/shards`` (once: an existing manifest means it is done)."""
    out = base / "shards"
    if (out / "manifest.json").is_file():
        return out
    make_tree(base / "corpus", per_class=1)
    make_noise(base / "noise", seconds=4.0)
    cfg = load_config(None, ["corpus.kind=iemocap", f"corpus.root={base / 'corpus'}", f"noise.dir={base / 'noise'}",
                             f"out={out}", "shard.max_samples=8", f"snr_db={SNR_DB}", "split.folds=2",
                             "datasets=[ahsn,aesn]"])
    return run_build(cfg, executor="serial")


@pytest.fixture
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny build folder. Read-only: copy it before damaging anything."""
    return make_tiny_build(tmp_path_factory.getbasetemp() / "serwild-tiny-build")


def manifest_of(build_dir: Path) -> dict:
    return json.loads((build_dir / "manifest.json").read_text())
