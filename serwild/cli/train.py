"""Fine-tune AlexNet on the shards; launches torchrun for you.

    serwild train --config configs/demo.yaml                      # one process per GPU, or 1 on a CPU
    serwild train --config configs/demo.yaml --nproc 2 train.conditions='[clean,snr15,snr20,snr40]'
    serwild train --config configs/demo.yaml --cv                 # every fold, then mean ± std
    serwild train --config configs/demo.yaml --resume             # continue runs/<name>/last.pt
    serwild train --config configs/demo.yaml --max-restarts 3     # survive a killed rank

Runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m serwild.trainer …``
(gloo on CPUs, NCCL on GPUs). For several nodes run torchrun yourself on each node, e.g.
``torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=node0:29500
--rdzv-id=ser1 --local-addr=node0 -m serwild.trainer --config cfg.yaml --resume`` (--local-addr:
the node itself; the build, the run folder and the feature cache on storage every node sees;
docs/training.md, "Several nodes (torchrun)", has the elastic variant).

Batches: ``train.batch_size`` is the GLOBAL batch (all ranks together, divided across them);
``train.batch_size_per_rank=N`` sets the per-device batch instead (global = N × ranks).
``train.checkpoint_every=200`` (steps) or ``"10min"`` writes a resumable mid-epoch last.pt;
``train.seed`` sets the data order and dropout (default: the root ``seed``). Outputs: ``runs/<name>/`` with
config.yaml, metrics.jsonl, last.pt, best.pt and curves.png; ``--cv`` adds
``runs/<name>-cv/`` with cv.json, cv.md and the best fold's best.pt.
"""

from __future__ import annotations

import argparse

from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.processes import torchrun
from serwild.trainer.launch import LaunchOptions, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="processes on this machine (default: the GPU count, or 1 without a GPU)")
    p.add_argument("--cv", action="store_true", help="train every cross-validation fold, then summarise")
    p.add_argument("--resume", action="store_true", help="continue runs/<name>/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name")
    p.add_argument("--max-restarts", type=int, default=0, metavar="R",
                   help="let torchrun restart the workers R times after a failure (they resume from last.pt)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    opts = LaunchOptions(nproc=args.nproc if args.nproc is not None else torchrun.default_nproc(),
                         cv=args.cv, resume=args.resume, overwrite=args.overwrite, max_restarts=args.max_restarts)
    return train(cfg, opts)
