"""The data tests' builds: the shared tiny build (tests/conftest.py, re-exported here), and a
build of two datasets (ahsn, aesn) with a fractional SNR for the hub card's tests, made once
per test run.

The card build reuses the builder tests' hand-made IEMOCAP-layout tree, at one utterance per
class per session, and builds it with ``run_build(cfg, executor="serial")`` (no Ray). Its
7.5 dB condition is named "snr7p5": a dot mangled in split names, which the card must handle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serwild.builder.build import run_build
from serwild.config import load_config
from serwild.data.manifest import Manifest, load_manifest
from tests.builder.conftest import make_noise, make_tree
from tests.conftest import made_once, shared_temp, tiny_build  # noqa: F401 - fixture, re-exported

SNR_DB = "[15,7.5]"  # 7.5 → condition "snr7p5": a name with a mangled dot in split names


def make_tiny_build(base: Path) -> Path:
    """The two-dataset card build in ``base/shards``."""
    out = base / "shards"
    make_tree(base / "corpus", per_class=1)
    make_noise(base / "noise", seconds=4.0)
    cfg = load_config(None, ["corpus.kind=iemocap", f"corpus.root={base / 'corpus'}", f"noise.dir={base / 'noise'}",
                             f"out={out}", "shard.max_samples=8", f"snr_db={SNR_DB}", "split.folds=2",
                             "datasets=[ahsn,aesn]"])
    return run_build(cfg, executor="serial")


@pytest.fixture(scope="session")
def card_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-dataset build with a 7.5 dB condition. Read-only: copy it before damaging anything."""
    return made_once(shared_temp(tmp_path_factory) / "card-build", make_tiny_build) / "shards"


def manifest_of(build_dir: Path) -> Manifest:
    return load_manifest(build_dir)
