"""The stage folders install under one namespace and claim no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stages_live_under_serwild_and_do_not_clobber(tmp_path: Path) -> None:
    # Run from an empty folder so the repo root is not on sys.path: this is what users see.
    code = (
        "import importlib.util, json, serwild.builder, serwild.trainer, serwild.evaluate\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in ('builder', 'trainer', 'evaluate')}))\n"
        "print(serwild.evaluate.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    claimed, evaluate_file = out.stdout.strip().splitlines()
    assert '"builder": false' in claimed and '"trainer": false' in claimed
    # `evaluate` may exist in the environment (HuggingFace's), but it must not be ours.
    assert Path(evaluate_file).resolve() == REPO / "evaluate" / "__init__.py"
    if '"evaluate": true' in claimed:
        spec = subprocess.run([sys.executable, "-c", "import evaluate; print(evaluate.__file__)"], cwd=tmp_path,
                              capture_output=True, text=True)
        assert str(REPO) not in spec.stdout


def test_cli_help_lists_every_stage() -> None:
    out = subprocess.run([sys.executable, "-m", "serwild", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("synth", "build", "verify", "train", "evaluate", "compare", "predict", "demo"):
        assert cmd in out.stdout
