"""Compare evaluated runs: a metric per test condition, one series per run.

    serwild compare runs/clean-only runs/augmented [--out DIR] [--metric weighted_f1] [--unit block]

Reads each run's ``report/metrics.json`` (written by ``serwild evaluate``; a report folder
or a metrics.json path works too) and writes, into ``--out`` (default
``<first run's parent>/compare_<run>_vs_<run>``): compare.png (the paper's Figures 4/5),
compare.md (one column per run, then each run's difference to the first) and compare.json,
and prints the table. The first run is the baseline the differences are taken against.
"""

from __future__ import annotations

import argparse
import json

from serwild.errors import UsageError
from serwild.evaluate.compare import METRICS, TITLES, compare_runs, markdown_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="two or more evaluated runs (run folders with report/metrics.json); the first is the baseline")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <parent of the first run>/compare_<a>_vs_<b>)")
    p.add_argument("--metric", default="weighted_f1", choices=sorted(METRICS),
                   help="what to compare (default: weighted_f1, the paper's Figures 4/5)")
    p.add_argument("--unit", default="block", choices=["block", "utterance"],
                   help="score per 1 s block (the paper's unit, default) or per utterance")


def run(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise UsageError("give at least two runs to compare")
    out = compare_runs(args.runs, out=args.out, metric=args.metric, unit=args.unit)
    comp = json.loads((out / "compare.json").read_text())
    print(f"\n{TITLES[args.metric]} per test condition (per {args.unit}):\n\n{markdown_table(comp)}\n")
    print(f"figure: {out / 'compare.png'}\ntable:  {out / 'compare.md'}")
    return 0
