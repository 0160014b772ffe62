"""The paper's claim, end to end, in one command.

    serwild demo                                   # the shipped demo.yaml: ~35 min on 2 CPU cores
    serwild demo --config configs/demo-tiny.yaml   # a one-minute smoke run (what the tests run)
    serwild demo --nproc 2 train.epochs=4          # any config key can be overridden

1. synthesise the demo corpus (IEMOCAP layout + classroom noise) if it is not there yet;
2. build the clean and noisy (15/20/40 dB) spectrogram shards with Ray, and verify them;
3. train experiment 1 (clean blocks only) and experiment 2 (clean + noisy blocks, with as
   many optimiser steps as experiment 1, so only the data differs) on AHSN;
4. evaluate both on each test condition, compare them (the paper's Figures 4/5), and draw
   the same test block clean and at the lowest SNR (the paper's Figure 2).
It ends by printing the comparison table and where the reports are.

The demo is ``serwild reproduce``'s protocol with a lighter preset: the same build, the same
two experiments (on whatever conditions ``snr_db`` builds), but one run each on every training
fold instead of k-fold cross-validation, and ``train.dataset`` only. Like reproduce, a second
invocation reuses a finished build, runs and evaluations of the same config and resumes a
half-trained run; ``--overwrite`` retrains runs of another config.
"""

from __future__ import annotations

import argparse

from serwild.cli.options import add_config_arguments
from serwild.pipelines.demo import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, default_help="the demo.yaml installed with serwild")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="training processes (default: the GPU count, or 1 on a CPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain runs of another config (a second demo reuses finished runs of the same one)")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.config, args.overrides, args.nproc, args.overwrite)
