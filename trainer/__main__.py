"""The torchrun entry point: one training process per rank.

    torchrun --standalone --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [k=v …]
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=host0:29500 \\
        --rdzv-id=ser1 --max-restarts=3 -m serwild.trainer --config cfg.yaml --resume
    python -m serwild.trainer --config configs/demo.yaml        # one process, no torchrun

``--resume`` continues from ``runs/<name>/last.pt`` when it exists (and starts fresh when
it does not, so the same command line serves torchrun's restarts); ``--overwrite`` replaces
an earlier run of the same name. ``serwild train`` builds these command lines for you.
"""

from __future__ import annotations

import argparse
import os
import sys

from serwild.config import load_config
from serwild.errors import UsageError
from serwild.trainer.train import main as train_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serwild.trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--resume", action="store_true", help="continue runs/<name>/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train_main(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    except UsageError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank raises the same error; say it once
            print(f"serwild.trainer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
