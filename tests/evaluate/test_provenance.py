"""What a report records about how its numbers were made: versions, training budget, smoke size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from serwild.evaluate import provenance
from serwild.processes.checkpoint import Checkpoint


def test_git_version_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert provenance.git_version.__wrapped__(str(tmp_path)) == "unknown"


def test_git_version_of_a_checkout_never_writes_its_index(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("1\n")
    subprocess.run(["git", *env, "-C", str(repo), "add", "a.txt"], check=True)
    subprocess.run(["git", *env, "-C", str(repo), "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert provenance.git_version.__wrapped__(str(repo)) == head
    (repo / "a.txt").write_text("2\n")
    index = (repo / ".git" / "index").stat().st_mtime_ns
    assert provenance.git_version.__wrapped__(str(repo)) == f"{head}-dirty"
    assert (repo / ".git" / "index").stat().st_mtime_ns == index


def test_training_budget_from_config_and_history(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "x-fold1"
    run.mkdir(parents=True)
    lines = [{"epoch": e, "steps": 5, "samples": 80, "world_size": 2} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    ckpt = Checkpoint(model={}, epoch=2, classes=["a", "b"], dataset="d", manifest_fingerprint="f", arch="tiny",
                      config={"train": {"epochs": 3, "batch_size": 16, "samples_per_epoch": "clean",
                                        "run_dir": str(tmp_path / "runs"), "name": "x-fold1"}})
    # a CV summary's copy of the best fold's best.pt: the history is found through its config
    b = provenance.training_budget(ckpt, tmp_path / "runs" / "x-cv" / "best.pt")
    assert b == {"epochs": 3, "epochs_done": 2, "samples_per_epoch_config": "clean", "samples_per_epoch": 80,
                 "batch_size_config": 16, "global_batch": 16, "per_rank_batch": 8, "world_size": 2,
                 "steps_per_epoch": 5, "optimizer_steps": 10, "still_learning": None}
    assert provenance.budget_line(b) == ("2 of 3 epochs, 80 (config: clean) samples per epoch, global batch 16 = "
                                         "2 rank(s) × 8 per rank, 5 steps per epoch, 10 optimiser steps in all")
    bare = provenance.training_budget(ckpt, tmp_path / "elsewhere" / "best.pt", history=[])
    assert bare["global_batch"] is None and "batch_size 16 in the config" in provenance.budget_line(bare)


def test_smoke_note_only_where_declared() -> None:
    assert provenance.smoke_note({"smoke": True}) == provenance.SMOKE_NOTE
    assert provenance.smoke_note({"smoke": False}) == "" and provenance.smoke_note({}) == ""
