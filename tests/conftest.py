"""Fixtures every folder shares: the tiny synthetic corpus and one tiny build, each made once
per test run (also under pytest-xdist: the first worker makes it under a file lock in the
run's shared temp folder, the others wait and reuse it).

``tiny_build`` is ``serwild build`` of the tiny synthetic corpus (no Ray): dataset ahsn,
conditions clean + snr15, 5 folds, at most 12 samples per shard (so one fold's validation
set is ~2 shards and 2-rank tests see odd shard and sample counts). It is read-only for
tests: copy it before damaging anything. A test that changes one of its shards or its
manifest anyway fails the run at the end (:func:`read_only`).

Folders that need a build of another shape keep their own: tests/evaluate's hand-written
build with exact odd counts, tests/builder's hand-made IEMOCAP tree (which pins the reader to
the real on-disk format), tests/data's two-dataset build with a fractional SNR (the hub card's
split names).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serwild.data.manifest import Manifest, load_manifest

# One thread per process, set before anything imports torch: the suite runs two workers on two
# cores, each starting torchrun ranks, Ray workers and builds; more threads per process only
# wait for each other (OpenMP's idle threads spin). Every subprocess inherits it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_BUILD = ["corpus.kind=synthetic", "datasets=[ahsn]", "snr_db=[15]", "split.folds=5", "shard.max_samples=12"]


@pytest.fixture(autouse=True)
def _shard_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote shards a test fetches go to a cache of its own in this run's temp folder (made
    when first used), never to the machine's: each test sees its own fetches."""
    monkeypatch.setenv("SERWILD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / f"shard-cache-{secrets.token_hex(4)}"))


def shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temp folder that every xdist worker sees (a worker's own is one level down)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(folder: Path, make: Callable[[Path], object]) -> Path:
    """``make(folder)`` once per run: under an exclusive lock, and only if no earlier maker
    finished (``<folder>.done``, beside it; one that failed half-way left none: start over)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(folder.name + ".done")
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            done.touch()
    return folder


def _synthesise(folder: Path) -> None:
    from serwild.synth.corpus import write_synthetic_corpus

    write_synthetic_corpus(folder, size="tiny", seed=0)


def build_of(corpus: Path, config: str | None, overrides: list[str]) -> Callable[[Path], object]:
    """What :func:`made_once` calls to build ``corpus`` (its noise in ``noise/``) into ``<folder>/shards``,
    serially (no Ray)."""
    def make(folder: Path) -> None:
        from serwild.builder.build import run_build
        from serwild.config import load_config

        cfg = load_config(config, [*overrides, f"corpus.root={corpus}", f"noise.dir={corpus / 'noise'}",
                                   f"out={folder / 'shards'}"])
        run_build(cfg, executor="serial")
    return make


@contextlib.contextmanager
def short_temp_folder() -> Iterator[Path]:
    """An empty folder of this test's own with a short path (what TMPDIR usually is), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def nothing_left(tmp: Path, out: Path) -> None:
    """Nothing of the build's outside ``out`` in the temp folder ``tmp``, and no Ray folder in ``out``."""
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p != out and out not in p.parents)
    assert left == [], left
    assert not [p for p in out.rglob("*") if "ray" in p.name.lower() or "session_" in p.name], \
        sorted(p.name for p in out.iterdir())


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic corpus (IEMOCAP's layout, noise in ``noise/``), synthesised once per run.
    Read-only: a test that needs to change it copies it."""
    return made_once(shared_temp(tmp_path_factory) / "tiny-corpus", _synthesise)


def _digests(build: Path) -> dict[str, str]:
    return {str(p.relative_to(build)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in [build / "manifest.json", *sorted(build.rglob("*.tar"))]}


@contextlib.contextmanager
def read_only(build: Path) -> Iterator[Path]:
    """``build`` for tests to share; afterwards its manifest and shards must be as they were (a test
    that changed them would make later tests' results depend on the order they ran in)."""
    before = _digests(build)
    yield build
    after = _digests(build)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared build {build} (copy it first): {changed[:5]}"


@pytest.fixture(scope="session")
def tiny_build(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The finished tiny build folder (see the module's docstring). Read-only: copy it first."""
    folder = made_once(shared_temp(tmp_path_factory) / "tiny-build", build_of(tiny_corpus, None, TINY_BUILD))
    with read_only(folder / "shards") as build:
        yield build


@pytest.fixture(scope="session")
def tiny_build_without_validation(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny build made with ``split.validation_fraction: 0`` (as the paper's configs make
    theirs): a run on it without a CV fold has nothing to validate on. Read-only, made on first use."""
    folder = made_once(shared_temp(tmp_path_factory) / "tiny-build-no-validation",
                       build_of(tiny_corpus, None, [*TINY_BUILD, "split.validation_fraction=0"]))
    with read_only(folder / "shards") as build:
        yield build


@pytest.fixture(scope="session")
def tiny_manifest(tiny_build: Path) -> Manifest:
    return load_manifest(tiny_build)
