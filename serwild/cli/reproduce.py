"""The paper's whole protocol in one command, resumable: build → k-fold CV of experiment 1
(clean) and experiment 2 (clean + noisy) per dataset → test each best fold on every
condition → one report (Tables 5/6 with 95 % intervals, Figures 4/5, CV mean ± std, wall times).

    serwild reproduce --config configs/protocol-tiny.yaml        # smoke size, a few minutes
    serwild reproduce --config configs/protocol-demo.yaml        # the synthetic corpus, both datasets
    serwild reproduce --config configs/demo.yaml train.epochs=4  # any config key can be overridden

Run the same command again after a kill: finished runs and evaluations are reused, a
half-trained fold resumes from its last.pt. A run folder of another config is refused
(--overwrite retrains it).
"""

from __future__ import annotations

import argparse

from serwild.cli.options import add_config_arguments
from serwild.pipelines.reproduce import run_reproduce


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="training processes per run (default: the GPU count, or 1 on a CPU)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="the report folder (default: <train.run_dir>/reproduce)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain run folders that hold another config, replace a build of another config")
    p.add_argument("--serial", action="store_true", help="build without Ray, in this process (tiny corpora)")


def run(args: argparse.Namespace) -> int:
    run_reproduce(args.config, args.overrides, nproc=args.nproc, report_dir=args.report, overwrite=args.overwrite,
                  executor="serial" if args.serial else "ray")
    return 0
