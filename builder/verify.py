"""``serwild verify DIR``: every shard of a build against its manifest.

    serwild verify shards/demo

Recomputes each listed shard's sha256 and sample count and looks for tar files the
manifest does not list. Prints one line per bad, missing or extra shard and exits 1 if
there is any; exits 0 with a summary otherwise.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="DIR", help="a build folder (holds manifest.json)")
    p.add_argument("--quick", action="store_true", help="check sizes only, not sha256 and counts")


def run(args: argparse.Namespace) -> int:
    from serwild.builder.manifest import check_shards, extra_shards, load_manifest

    manifest = load_manifest(args.build_dir)
    problems = check_shards(args.build_dir, manifest["shards"], full=not args.quick)
    problems += [f"extra: {p} (not in the manifest)" for p in extra_shards(args.build_dir, manifest)]
    for line in problems:
        print(line)
    n = len(manifest["shards"])
    if problems:
        print(f"verify: {len(problems)} problem(s) in {n} shards of {args.build_dir}", file=sys.stderr)
        return 1
    print(f"verify: {n} shards, {manifest['totals']['samples']} samples OK ({args.build_dir})")
    return 0
