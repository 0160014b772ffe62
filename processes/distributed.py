"""DDP setup from torchrun's environment, and the few collectives the trainer uses.

One code path for one CPU process (no process group), N CPU processes (gloo), one or N
GPUs and several nodes (NCCL, one process per GPU). Every collective inherits the
process group's timeout (``train.timeout_s``), so a dead or stuck rank ends the job with
an error instead of a hang; torchrun then restarts it (``--max-restarts``) or gives up.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from serwild.errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, writes checkpoints and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("train.device=cuda but no CUDA device is visible (use train.device=auto or cpu)")
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                         f"use --nproc_per_node <= the GPU count")
    return torch.device("cuda", local_rank)


def kernels(device: torch.device) -> str:
    """What the arithmetic runs on. Floating-point sums round differently across CPU instruction
    sets, thread counts and GPU models, and a from-scratch run's trajectory amplifies the last
    bits: the same config gives the same numbers to the digit only on the same kernels."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)"


def setup(device_preference: str = "auto", timeout_s: int = 600) -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=pick_device(device_preference, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_preference, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s),
                              **_attempt_store(rank, world, timeout_s)}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the NCCL communicator to this GPU up front
    dist.init_process_group(**kwargs)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def _attempt_store(rank: int, world: int, timeout_s: int) -> dict[str, Any]:
    """A store private to this torchrun attempt, when the elastic agent hosts the store.

    The agent keeps one TCPStore for all restarts, and torch (2.14 here) no longer prefixes
    the keys per attempt: a restarted rank then reads the dead attempt's addresses and gloo
    fails with "connectFullMesh … Connection refused" (reproduced with a 10-line script).
    Prefixing with the restart count gives every attempt fresh keys.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # env:// (rank 0 hosts a fresh store each time) is fine as it is
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=False, timeout=timedelta(seconds=timeout_s))
    return {"store": dist.PrefixStore(f"serwild/attempt_{attempt}", store), "rank": rank, "world_size": world}


def teardown(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks (in place on a copy on the collective's device); returns it on ``t``'s device."""
    if not d.distributed:
        return t
    work = t.detach().clone().to(d.device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def all_gather_object(obj: Any, d: Dist) -> list[Any]:
    if not d.distributed:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def log(d: Dist, msg: str) -> None:
    """``msg`` on stderr, from rank 0 only."""
    if d.is_main:
        print(msg, file=sys.stderr, flush=True)
