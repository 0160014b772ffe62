"""How long a run will take, said early: the rate measured over its first steps, and the run's
ETA after every epoch (the progress bar's ETA is the epoch's only).

    budget = Budget(steps_left=8 * 24, images_per_step=16)
    line = budget.step()            # after each optimiser step: a line once, at step MEASURE_STEPS
    budget.eta(epochs_done=1, epochs_left=7)   # "run ETA 4m10s (about 17:42)"
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MEASURE_STEPS = 10  # the first is warm-up (allocations, a cold loader): the rate is of steps 2..N


def duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def clock(seconds_from_now: float) -> str:
    return time.strftime("%H:%M", time.localtime(time.time() + seconds_from_now))


@dataclass
class Budget:
    """The training budget of what this process runs (a resumed run: what is left of it)."""

    steps_left: int  # optimiser steps this process will run
    images_per_step: int  # the global batch: every rank's images of one step
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    first_at: float | None = None
    said: bool = False

    def step(self) -> str | None:
        """Count a step; once the first ``MEASURE_STEPS`` are done, the line that says the measured
        rate and what the run will cost (None every other time)."""
        self.done += 1
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        if self.said or self.done < min(MEASURE_STEPS, self.steps_left) or self.done < 2:
            return None
        self.said = True
        per_step = (now - self.first_at) / (self.done - 1)
        left = per_step * (self.steps_left - self.done)
        return (f"budget: {self.images_per_step / per_step:.1f} images/s measured over steps 2-{self.done}; "
                f"this run trains {self.steps_left} steps × {self.images_per_step} images: about "
                f"{duration(left)} of training left (validation not counted), done around {clock(left)}")

    def eta(self, epochs_done: int, epochs_left: int) -> str:
        """The run's ETA from the mean wall time of the epochs this process has finished
        (training, validation and checkpoints alike)."""
        if epochs_left <= 0:
            return "run done"
        left = (time.perf_counter() - self.started) / max(1, epochs_done) * epochs_left
        return f"run ETA {duration(left)} (about {clock(left)})"
