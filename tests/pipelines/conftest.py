"""The pipelines' build: configs/protocol-tiny.yaml (datasets=[ahsn]) of the shared tiny
corpus, made once per test run. It is also configs/demo-tiny.yaml's build with
``split.folds=2`` (the same build config), so the demo and ``serwild reproduce`` tests both
find it finished and reuse it: neither test builds (nor starts Ray), and the corpus is not
synthesised again. Read-only: the pipelines reuse a finished build without writing to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import build_of, made_once, read_only, shared_temp

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_TINY = REPO / "configs" / "protocol-tiny.yaml"
DEMO_TINY = REPO / "configs" / "demo-tiny.yaml"
PROTOCOL = ["datasets=[ahsn]"]  # with protocol-tiny.yaml; one dataset: the second goes through the same loop
# with demo-tiny.yaml: the same build as PROTOCOL's (made once for both; the real demo's
# validation part and stopping rule are its own config's, run by `make demo`)
DEMO = ["split.folds=2", "split.validation_fraction=0"]
ARCH = ["train.arch=tiny"]  # what the pipelines train here: AlexNet's layers at small widths


def corpus_args(corpus: Path) -> list[str]:
    return [f"corpus.root={corpus}", f"noise.dir={corpus / 'noise'}"]


@pytest.fixture(scope="session")
def pipeline_build(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = made_once(shared_temp(tmp_path_factory) / "protocol-tiny-build",
                       build_of(tiny_corpus, str(PROTOCOL_TINY), PROTOCOL))
    with read_only(folder / "shards") as build:
        yield build
