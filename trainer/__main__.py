"""The torchrun entry point: one training process per rank.

    torchrun --standalone --nproc_per_node=2 -m serwild.trainer --config configs/demo.yaml [k=v …]
    torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=node0:29500 --rdzv-id=ser1 \\
        --local-addr=node0 -m serwild.trainer --config cfg.yaml --resume    # on every node (docs/training.md)
    python -m serwild.trainer --config configs/demo.yaml        # one process, no torchrun

``--resume`` continues from ``runs/<name>/last.pt`` when it exists (and starts fresh when
it does not, so the same command line serves torchrun's restarts); ``--overwrite`` replaces
an earlier run of the same name. ``serwild train`` builds these command lines for you.

Exit status: 0 done; 2 a mistake in the input (a bad cache file and a run folder that cannot be
written included) and 3 a fault met mid-run (a full disk, a write the file system refused, a
non-finite loss), each said in one line (torchrun run through ``serwild train`` then adds no
failure report); 1 anything else. Under torchrun a rank ends with its agent, even a killed one.
"""

from __future__ import annotations

import argparse
import os
import sys

from serwild.config import load_config
from serwild.data.fetch import RemoteError
from serwild.data.loaders import ShardError
from serwild.errors import UsageError, said
from serwild.processes.torchrun import SAID_EXIT, USAGE_EXIT, exit_now, follow_agent
from serwild.trainer.train import NonFiniteLoss
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
    follow_agent()
    args = parse_args(argv)
    try:
        train_main(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    except (UsageError, OSError) as e:
        if (s := said(e)) is None:  # a bug: its traceback
            raise
        rank = os.environ.get("RANK", "0")
        # A refusal before training is agreed by every rank (preflight.agree): said once. A data
        # error mid-run (a shard, the network) is this rank's alone: it says it, naming the rank; a
        # file the system refuses, every rank that meets it.
        local = isinstance(e, (RemoteError, ShardError))
        if local or rank == "0" or not isinstance(e, UsageError):
            who = f"rank {rank}: " if local and os.environ.get("WORLD_SIZE", "1") != "1" else ""
            print(f"serwild.trainer: error: {who}{s.line.removeprefix('error: ')}", file=sys.stderr, flush=True)
        # torchrun's own failures exit 1: a rank that said its error exits 2 (the user's) or 3 (said)
        return USAGE_EXIT if s.code == 2 and isinstance(e, UsageError) else SAID_EXIT
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        # Another rank died (its own error says why): one line here, not a gloo traceback.
        print(f"serwild.trainer: rank {os.environ.get('RANK', '?')} stopped: another rank failed "
              "(its error says why)", file=sys.stderr, flush=True)
        return SAID_EXIT  # said; the agent may see this exit before the failing rank's own
    except NonFiniteLoss as e:  # every rank raises it at the same step (a collective): rank 0 says it
        if os.environ.get("RANK", "0") == "0":
            print(f"serwild.trainer: error: {e}", file=sys.stderr, flush=True)
        return SAID_EXIT
    return 0


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank's process is gone."""
    text = str(e)
    return "closed by peer" in text or "reset by peer" in text


if __name__ == "__main__":
    exit_now(main())  # a bug's exception is raised before this, with its traceback
