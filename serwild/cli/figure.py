"""Paper figures from a build, on their own:

    serwild figure spectrograms --build shards/demo [--dataset ahsn] [--out spectrograms.png]

``spectrograms``: the same test block clean and at the build's lowest SNR, side by side (the
paper's Figure 2), from any build (a folder); ``serwild demo`` draws the same figure for its build.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serwild.data.manifest import load_manifest
from serwild.errors import UsageError
from serwild.pipelines.demo import example_spectrograms


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=["spectrograms"], help="the figure to draw")
    p.add_argument("--build", required=True, metavar="DIR", help="a build folder (holds manifest.json)")
    p.add_argument("--dataset", default=None, help="the view to draw from (default: the build's first)")
    p.add_argument("--out", default="spectrograms.png", metavar="PNG", help="where to write it")


def run(args: argparse.Namespace) -> int:
    build = Path(args.build)
    datasets = list(load_manifest(build).datasets)
    dataset = args.dataset or datasets[0]
    if dataset not in datasets:
        raise UsageError(f"--dataset {dataset}: the build has {', '.join(datasets)}")
    print(example_spectrograms(build, dataset, Path(args.out)))
    return 0
