"""``serwild train``: fine-tune AlexNet on the shards; launches torchrun for you.

    serwild train --config configs/demo.yaml                      # one process per GPU, or 1 on a CPU
    serwild train --config configs/demo.yaml --nproc 2 train.conditions='[clean,snr15,snr20,snr40]'
    serwild train --config configs/demo.yaml --cv                 # every fold, then mean ± std
    serwild train --config configs/demo.yaml --resume             # continue runs/<name>/last.pt
    serwild train --config configs/demo.yaml --max-restarts 3     # survive a killed rank

Runs ``python -m torch.distributed.run --standalone --nproc_per_node N -m serwild.trainer …``
(gloo on CPUs, NCCL on GPUs). For several nodes run torchrun yourself on each node, e.g.
``torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint host0:29500
--rdzv-id ser1 --max-restarts 3 -m serwild.trainer --config cfg.yaml --resume`` (the run
folder must be on a file system every node sees). Outputs: ``runs/<name>/`` with
config.yaml, metrics.jsonl, last.pt, best.pt and curves.png; ``--cv`` adds
``runs/<name>-cv/`` with cv.json, cv.md and the best fold's best.pt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from serwild.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from serwild.cli import add_config_arguments

    add_config_arguments(p)
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="processes on this machine (default: the GPU count, or 1 without a GPU)")
    p.add_argument("--cv", action="store_true", help="train every cross-validation fold, then summarise")
    p.add_argument("--resume", action="store_true", help="continue runs/<name>/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name")
    p.add_argument("--max-restarts", type=int, default=0, metavar="R",
                   help="let torchrun restart the workers R times after a failure (they resume from last.pt)")


def torchrun_command(config: str | None, overrides: list[str], nproc: int, max_restarts: int,
                     resume: bool, overwrite: bool) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "serwild.trainer"]
    cmd += ["--config", config] if config else []
    cmd += overrides
    # A restarted worker must pick up last.pt, so restarts imply --resume (a fresh start when none).
    if resume or max_restarts > 0:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def default_nproc() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def launch(cmd: list[str], nproc: int) -> int:
    env = dict(os.environ)
    # torchrun would pin every CPU process to one thread; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)


def run(args: argparse.Namespace) -> int:
    from serwild.config import load_config
    from serwild.trainer.model import fetch_imagenet_weights
    from serwild.trainer.setup import manifest_folds, plan_data, resolve

    cfg = load_config(args.config, args.overrides)
    nproc = args.nproc or default_nproc()
    if nproc < 1:
        raise UsageError("--nproc must be at least 1")
    if args.cv and cfg.cv.fold is not None:
        raise UsageError("--cv trains every fold: drop cv.fold from the config or the overrides")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    plan = plan_data(resolve(cfg))  # a bad build folder or selection fails here, before torchrun
    if cfg.train.pretrained == "imagenet":
        fetch_imagenet_weights(progress=True)  # once, here, rather than in every rank
    folds = manifest_folds(plan.manifest, cfg.train.dataset) if args.cv else [cfg.cv.fold]
    base = cfg.train.name or f"{cfg.train.dataset}-{'+'.join(cfg.train.conditions)}"
    for fold in folds:
        overrides = list(args.overrides)
        if args.cv:
            overrides += [f"cv.fold={fold}", f"train.name={base}-fold{fold}"]
            print(f"=== fold {fold} of {folds} ===", file=sys.stderr, flush=True)
        run_dir = Path(cfg.train.run_dir) / (f"{base}-fold{fold}" if args.cv else resolve(cfg).train.name)
        if args.resume and not (run_dir / "last.pt").is_file() and not args.cv:
            raise UsageError(f"--resume: {run_dir}/last.pt does not exist (nothing to continue)")
        if not (args.resume or args.overwrite) and (run_dir / "last.pt").is_file():
            raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite "
                             f"to start again, or set train.name=<another name>")
        cmd = torchrun_command(args.config, overrides, nproc, args.max_restarts, args.resume, args.overwrite)
        code = launch(cmd, nproc)
        if code != 0:
            print(f"serwild train: training failed (exit status {code}); see the messages above",
                  file=sys.stderr)
            return 1
    if args.cv:
        from serwild.trainer.cv import summarise

        summary = summarise(cfg.train.run_dir, base, folds, cfg.train.best_metric)
        out = Path(cfg.train.run_dir) / f"{base}-cv"
        print((out / "cv.md").read_text(), end="")
        print(f"cross-validation summary: {out}/cv.json; best fold {summary['best_fold']}", file=sys.stderr)
    return 0
