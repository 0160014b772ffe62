"""What the paper's protocol is made of, shared by its runner (:mod:`serwild.pipelines.reproduce`)
and its report (:mod:`serwild.pipelines.protocol_report`): the two experiments, the presets of
``serwild reproduce`` and ``serwild demo``, one dataset × experiment, and the stage clock.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serwild.processes import atomic
from serwild.trainer.preflight import RunRef

EXPERIMENTS = {1: "clean", 2: "clean + noisy"}


@dataclass(frozen=True)
class Preset:
    """What ``serwild reproduce`` (the paper's protocol) and ``serwild demo`` (its quick form)
    set differently; everything else (build, the two experiments, training, evaluation) is shared."""

    cross_validate: bool  # k-fold CV, then the best fold's model; or one run on every training fold
    every_dataset: bool  # every built dataset (``datasets``); or only ``train.dataset``
    names: dict[int, str]  # experiment number → the last part of its run name


PROTOCOL = Preset(cross_validate=True, every_dataset=True, names={1: "exp1", 2: "exp2"})
DEMO = Preset(cross_validate=False, every_dataset=False, names={1: "clean", 2: "augmented"})


@dataclass
class Experiment:
    """One dataset × experiment: its runs' overrides and names."""

    dataset: str
    number: int
    conditions: list[str]
    overrides: list[str]  # the experiment's own, after the user's
    run: RunRef  # its run (no CV) or the stem of its folds (<name>-fold<k>, <name>-cv)
    folds: list[int] = field(default_factory=list)  # empty: one run, no cross-validation

    @property
    def base(self) -> str:
        return self.run.name

    @property
    def title(self) -> str:
        return f"{self.dataset} exp{self.number} ({EXPERIMENTS[self.number]})"


class Progress:
    """``[3/18] …`` lines over the whole protocol, and every stage's wall time in stages.json
    (kept across invocations, so a reused stage still shows the time it took)."""

    def __init__(self, total: int, path: Path) -> None:
        self.total, self.done, self.path = total, 0, path
        try:
            self.stages: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.stages = {}
        self.current: set[str] = set()

    def start(self, key: str, label: str) -> float:
        self.done += 1
        print(f"[{self.done}/{self.total}] {label} …", file=sys.stderr, flush=True)
        return time.time()

    def finish(self, key: str, label: str, t0: float, reused: bool) -> None:
        seconds = time.time() - t0
        old = self.stages.get(key) or {}
        if reused and old.get("seconds") is not None:
            entry = {**old, "label": label, "reused": True}
        else:
            entry = {"label": label, "seconds": round(seconds, 2), "reused": reused}
        self.stages[key] = entry
        self.current.add(key)
        what = "reused" if reused else f"done in {seconds:.1f} s"
        print(f"[{self.done}/{self.total}] {label}: {what}", file=sys.stderr, flush=True)
        atomic.write_json(self.path, self.stages)
