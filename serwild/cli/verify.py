"""Check every shard of a build against its manifest: a folder or a published copy.

    serwild verify shards/demo
    serwild verify shards/demo --quick      # sizes only
    serwild verify https://huggingface.co/datasets/<user>/<repo>/resolve/main/
    serwild verify https://host/builds/demo/ remote.timeout_s=10 remote.retries=5
    serwild verify s3://bucket/builds/demo remote.endpoint_url=http://127.0.0.1:9000

Recomputes each listed shard's sha256 and sample count and, for a folder, looks for tar
files the manifest does not list. A URL (file://, http(s)://, s3://, gs://, hf://) is read from the same
base as its manifest.json: each shard is streamed once and nothing is written to disk;
``--quick`` asks sizes only (HTTP HEAD, an object's info). A URL cannot be listed, so
the "extra shards" check is for folders only (the summary says so). Prints one line per
bad, missing or extra shard and exits 1 if there is any; exits 0 with a summary otherwise.
Network reads time out and retry as the config's ``remote`` section says.
"""

from __future__ import annotations

import argparse
import sys

from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.data.build import open_build


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="DIR_OR_URL",
                   help="a build folder (holds manifest.json), or its file://, http(s)://, s3:// URL")
    p.add_argument("--quick", action="store_true", help="check sizes only, not sha256 and counts")
    add_config_arguments(p, default_help="built-in defaults; only the remote section matters here")


def run(args: argparse.Namespace) -> int:
    build = open_build(args.build_dir, load_config(args.config, args.overrides).remote.options())
    manifest = build.manifest
    problems = build.verify(full=not args.quick)
    for line in problems:
        print(line)
    n = len(manifest.shards)
    if build.is_remote:
        print(f"verify: extra shards not checked ({args.build_dir} is remote and cannot be listed; "
              "verify the folder it was published from for that)", file=sys.stderr)
    if problems:
        print(f"verify: {len(problems)} problem(s) in {n} shards of {args.build_dir}", file=sys.stderr)
        return 1
    samples = manifest.samples  # (not 'totals': check_manifest does not require it)
    print(f"verify: {n} shards, {samples} samples OK ({args.build_dir})")
    return 0
