"""Check every shard of a build against its manifest.

    serwild verify shards/demo
    serwild verify shards/demo --quick      # sizes only

Recomputes each listed shard's sha256 and sample count and looks for tar files the
manifest does not list. Prints one line per bad, missing or extra shard and exits 1 if
there is any; exits 0 with a summary otherwise.
"""

from __future__ import annotations

import argparse
import sys

from serwild.data.manifest import verify_build


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="DIR", help="a build folder (holds manifest.json)")
    p.add_argument("--quick", action="store_true", help="check sizes only, not sha256 and counts")


def run(args: argparse.Namespace) -> int:
    manifest, problems = verify_build(args.build_dir, full=not args.quick)
    for line in problems:
        print(line)
    n = len(manifest["shards"])
    if problems:
        print(f"verify: {len(problems)} problem(s) in {n} shards of {args.build_dir}", file=sys.stderr)
        return 1
    print(f"verify: {n} shards, {manifest['totals']['samples']} samples OK ({args.build_dir})")
    return 0
