"""Score a checkpoint on every test condition of its build, each condition separately.

    serwild evaluate --checkpoint runs/<name>/best.pt [--shards shards/<build>] [--out DIR]
    serwild evaluate --checkpoint runs/<name>/best.pt --nproc 2       # torchrun, 2 processes
    serwild evaluate --checkpoint best.pt eval.batch_size=32 eval.num_workers=0 eval.device=cpu
    serwild evaluate --checkpoint best.pt --shards https://host/builds/demo/ remote.timeout_s=10

Each condition's test shards are checked against the manifest (present, size, sha256,
sample count) and then read exactly once, split across the processes; the number of
distinct samples scored must equal the manifest's count. The checkpoint must come from
this build (same manifest fingerprint and classes). The build the checkpoint records is
used when ``--shards`` is not given. Batch
size, loader workers and device are the config's ``eval`` section (``--config`` and
``eval.*`` overrides). Writes the report folder (default ``<run dir>/report/``):
metrics.json, report.md (the paper's Tables 5/6, with the training budget, N per condition
and the software versions), confusion.png (a panel per condition), weighted_f1.png (with
intervals and chance), predictions.csv (readable, rounded) and logits.npz (the exact
logits, what ``serwild compare`` decides from). A model that predicts one class for ≥ 95 % of
its blocks, or whose UA interval includes chance, gets a warning line, printed and at the
top of report.md.
"""

from __future__ import annotations

import argparse
import os
import signal

from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.errors import UsageError
from serwild.evaluate.evaluate import evaluate_checkpoint
from serwild.processes import torchrun


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by serwild train")
    p.add_argument("--shards", metavar="DIR_OR_URL",
                   help="build folder, or its file://, http(s)://, s3:// URL (default: the build the checkpoint "
                        "was trained on); network reads follow the config's remote section")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <checkpoint's folder>/report)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="launch N processes with torchrun (ignored when already under torchrun)")
    p.add_argument("--no-sha256", dest="sha256", action="store_false",
                   help="check shard sizes and counts but do not recompute sha256 (faster on huge builds)")
    p.add_argument("--allow-other-build", action="store_true",
                   help="score on a build other than the checkpoint's (classes must still match); "
                        "beware: its test samples may overlap what the model was trained on")
    add_config_arguments(p)


def rank_argv(args: argparse.Namespace) -> list[str]:
    """This command line, for each torchrun rank (without --nproc)."""
    argv = ["evaluate", "--checkpoint", args.checkpoint]
    for flag, value in (("--shards", args.shards), ("--out", args.out), ("--config", args.config)):
        if value is not None:
            argv += [flag, str(value)]
    argv += [] if args.sha256 else ["--no-sha256"]
    argv += ["--allow-other-build"] if args.allow_other_build else []
    return argv + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise UsageError("--nproc must be at least 1")
    cfg = load_config(args.config, args.overrides)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return torchrun.launch(torchrun.command("serwild", rank_argv(args), args.nproc), args.nproc)
    torchrun.follow_agent()  # a rank ends with its torchrun agent, even one killed outright
    if torchrun.is_rank():
        # A scoring rank has nothing to save (the report is written at the end, atomically): on
        # SIGTERM it ends at once. Raised as an exception instead, it waited inside a collective
        # or its loader workers' shutdown until torchrun killed it 30 s later.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    evaluate_checkpoint(args.checkpoint, shards=args.shards, out=args.out, settings=cfg.eval,
                        check_sha256=args.sha256, allow_other_build=args.allow_other_build,
                        remote=cfg.remote.options())
    return 0
