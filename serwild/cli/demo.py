"""The paper's claim, end to end, in one command.

    serwild demo                                   # the shipped demo.yaml: ~12 min on 2 CPU cores
    serwild demo --config configs/demo-tiny.yaml   # a one-minute smoke run (what the tests run)
    serwild demo --nproc 2 train.epochs=4          # any config key can be overridden

1. synthesise the demo corpus (IEMOCAP layout + classroom noise) if it is not there yet;
2. build the clean and noisy (15/20/40 dB) spectrogram shards with Ray, and verify them;
3. train experiment 1 (clean blocks only) and experiment 2 (clean + noisy blocks, with as
   many optimiser steps as experiment 1, so only the data differs) on AHSN;
4. evaluate both on each test condition, compare them (the paper's Figures 4/5), and draw
   the same test block clean and at 15 dB (the paper's Figure 2).
It ends by printing the comparison table and where the reports are.
"""

from __future__ import annotations

import argparse

from serwild.cli.options import add_config_arguments
from serwild.pipelines.demo import run_demo


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, default_help="the demo.yaml installed with serwild")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="training processes (default: the GPU count, or 1 on a CPU)")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.config, args.overrides, args.nproc)
