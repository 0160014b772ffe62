"""The torchrun command line, for every command that runs several processes (train, evaluate).

``python -m torch.distributed.run --standalone --nproc-per-node N [--max-restarts R] -m MODULE …``:
gloo on CPUs, NCCL on GPUs (chosen inside the ranks). Kept here, once, so the two launchers
cannot drift apart.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch


def default_nproc() -> int:
    """One process per visible GPU, or one on a CPU-only machine."""
    return max(1, torch.cuda.device_count())


def command(module: str, args: list[str], nproc: int, max_restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", module, *args]


def launch(cmd: list[str], nproc: int) -> int:
    """Run ``cmd``; its exit status."""
    env = dict(os.environ)
    # torchrun would pin every CPU process to one thread; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)
