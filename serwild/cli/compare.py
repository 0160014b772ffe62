"""Compare evaluated runs: a metric per test condition, one series per run.

    serwild compare runs/clean-only runs/augmented [--out DIR] [--metric weighted_f1] [--unit block]
    serwild compare --arm clean runs/a-s0 runs/a-s1 --arm augmented runs/b-s0 runs/b-s1

Reads each run's ``report/metrics.json`` (written by ``serwild evaluate``; a report folder
or a metrics.json path works too) and writes, into ``--out`` (default
``<first run's parent>/compare_<run>_vs_<run>``): compare.png (the metric per condition, one
bar per run, intervals and chance), difference.png (each run minus the first with its paired
interval: the paper's Figures 4/5 claim), compare.md (one column per run, then each run's
difference to the first, the figures with captions) and compare.json, and prints the table.
A run whose model is degenerate (one class for ≥ 95 % of its blocks, or UA's interval
including chance) gets a warning line, printed and in compare.md. The first run (arm) is
the baseline the differences are taken against.
An arm of several runs (seeds, folds) shows mean ± std. Runs evaluated on the same test blocks
(same build) get a paired cluster-bootstrap interval for each difference, `*` where it excludes 0.
"""

from __future__ import annotations

import argparse

from serwild.errors import UsageError
from serwild.evaluate.compare import compare_runs, markdown_table, notes, parse_arms
from serwild.metrics import METRICS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="two or more evaluated runs (run folders with report/metrics.json), one arm each; "
                        "the first is the baseline")
    p.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "RUN_DIR"), default=[],
                   help="an arm of one or more runs (seeds, folds), repeated: --arm clean runs/a-s0 runs/a-s1 "
                        "--arm augmented runs/b-s0 runs/b-s1; the first arm is the baseline")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <parent of the first run>/compare_<a>_vs_<b>)")
    p.add_argument("--metric", default="weighted_f1", choices=sorted(METRICS),
                   help="what to compare (default: weighted_f1, the paper's Figures 4/5)")
    p.add_argument("--unit", default="block", choices=["block", "utterance"],
                   help="score per 1 s block (the paper's unit, default) or per utterance")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples for the paired intervals (default 1000; 0: no intervals)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - coverage of the intervals (default 0.05: 95%%)")


def run(args: argparse.Namespace) -> int:
    arms = parse_arms(args.arm)
    if arms and args.runs:
        raise UsageError("give the runs either as positional arguments or as --arm groups, not both")
    if len(arms or args.runs) < 2:
        raise UsageError("give at least two runs (or two --arm groups) to compare")
    if args.bootstrap < 0 or not 0.0 < args.alpha < 1.0:
        raise UsageError("--bootstrap must be >= 0 and --alpha in (0, 1)")
    result = compare_runs(args.runs, out=args.out, metric=args.metric, unit=args.unit, arms=arms,
                          bootstrap=args.bootstrap, seed=args.seed, alpha=args.alpha)
    comp, out = result.table, result.out
    text = "\n".join(notes(comp))
    flags = "".join(f"{line}\n" for lines in comp["flags"].values() for line in lines)
    print(f"\n{METRICS[args.metric].title} per test condition (per {args.unit}):\n\n{markdown_table(comp)}\n\n{text}\n")
    if flags:
        print(flags)
    print(f"figures: {out / 'compare.png'}, {out / 'difference.png'}\ntable:   {out / 'compare.md'}")
    return 0
