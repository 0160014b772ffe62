"""The one-command demo, at smoke size: (the build, found finished) → train both experiments →
evaluate → compare → example figure. Numbers from one short epoch mean nothing; the test
checks that the whole story runs and leaves every report file behind.

Synthesising and building are the same code as ``serwild build`` (tested in tests/builder, and
with Ray in tests/faults); here the demo finds the session's build of its config finished
(tests/pipelines/conftest.py) and reuses it, as a second ``serwild demo`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from serwild.cli import main as cli
from tests.pipelines.conftest import ARCH, DEMO, DEMO_TINY, corpus_args

pytestmark = pytest.mark.slow


def test_tiny_demo_end_to_end(pipeline_build: Path, tiny_corpus: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    overrides = [*corpus_args(tiny_corpus), *DEMO, *ARCH, f"out={pipeline_build}", f"train.run_dir={tmp_path / 'runs'}"]
    assert cli(["demo", "--config", str(DEMO_TINY), *overrides]) == 0
    out, err = capsys.readouterr()
    assert f"build {pipeline_build}: reused" in err  # the finished build of this config, not built again
    runs = tmp_path / "runs"
    for name in ("demo-clean", "demo-augmented"):
        report = runs / name / "report"
        for f in ("report.md", "metrics.json", "confusion.png", "weighted_f1.png"):
            assert (report / f).is_file(), f"{name}: {f} missing"
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["dataset"] == "ahsn"
        text = (report / "report.md").read_text()
        assert "15 dB" in text and "40 dB" in text and "scratch" in text
        assert "**Training budget:** 1 of 1 epochs, 32" in text and "**Software:** serwild " in text
    compare = runs / "demo-compare"
    assert all((compare / f).is_file() for f in ("compare.png", "difference.png", "spectrograms.png"))
    assert "demo-clean" in out and "demo-augmented" in out and "15 dB" in out
    # the closing table gives each difference its paired interval, and says how to read it
    comp = json.loads((compare / "compare.json").read_text())
    for label, d in zip(comp["labels"], comp["deltas"]["demo-augmented"]):
        row = [ln for ln in out.splitlines() if ln.startswith(f"| {label} |")][-1]  # the closing table
        assert row.rstrip(" |*").endswith(f"[{d['low']:+.2f}, {d['high']:+.2f}]"), row
    assert "`*` marks an interval that excludes 0" in out
    # experiment 2 took as many optimiser steps as experiment 1 (samples_per_epoch: clean)
    last = [(runs / n / "metrics.jsonl").read_text().splitlines()[-1] for n in ("demo-clean", "demo-augmented")]
    steps = [json.loads(line) for line in last]
    assert steps[0].get("steps") == steps[1].get("steps")
    # each run's checkpoint names the model it holds (train.arch), and the evaluation rebuilt that one
    assert [torch.load(runs / n / "best.pt", map_location="cpu", weights_only=True)["arch"]
            for n in ("demo-clean", "demo-augmented")] == ["tiny", "tiny"]
