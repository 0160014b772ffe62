"""benchmarks/gpu_check.sh is never a stub: its CPU mode runs every step the GPU run does, on the tiny network
(torchrun training with and without the feature cache, evaluate, predict, the summary)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_in_cpu_mode(tiny_build: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BUILD": str(tiny_build), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                       env=env, timeout=900, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "GPU CHECK OK (cpu)" in p.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"] == "cpu" and set(summary["train"]) == {"off", "on"}
    for row in summary["train"].values():
        assert row["images_per_s"] > 0 and 0.0 <= row["input_wait_fraction"] <= 1.0
    assert (tmp_path / "out" / "feature-cache").is_dir()  # the cached run really used the cache


def test_gpu_check_fails_loudly_naming_the_step(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BUILD": str(tmp_path / "no-such-build")}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True,
                       env=env, timeout=300, cwd=REPO)
    assert p.returncode != 0 and "GPU CHECK FAILED at step:" in p.stderr
