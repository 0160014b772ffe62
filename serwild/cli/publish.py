"""Upload a finished build for others to stream: a folder, file://, s3:// or hf://.

    serwild publish shards/demo s3://bucket/serwild/demo
    serwild publish shards/demo s3://bucket/serwild/demo remote.endpoint_url=http://127.0.0.1:9000
    serwild publish shards/demo hf://datasets/<user>/serwild-demo      # needs huggingface_hub and a token
    serwild publish shards/demo /mnt/share/serwild/demo

Verifies the build first, writes its Hub view (one Parquet table per shard under BUILD/hub/,
with top-level image, label, speaker, condition … columns, and a card that reads them, so
``load_dataset(DEST, view)`` gives train/validation/test with a ClassLabel ``label``; made once,
remade only for a changed shard; ``--tars-only`` skips it), then uploads the shards, the tables,
the other metadata, the hub card and manifest.json last: a reader never sees a manifest whose
shards are missing. Run it again after an interruption: it uploads only what is missing or
differs (sha256 against the manifest). It ends by verifying the destination by streaming every shard. Credentials and
endpoints: the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL) or the
config's ``remote`` section; a bucket must exist already. build-log.jsonl stays home.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serwild.builder.hubcard import write_hub_view
from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.data.manifest import Manifest
from serwild.data.publish import publish


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="BUILD", help="a finished build folder (holds manifest.json)")
    p.add_argument("dest", metavar="DEST", help="a folder, file://, s3://bucket/prefix or hf://datasets/user/repo")
    p.add_argument("--replace", action="store_true",
                   help="delete files at DEST that are not this build's (another build's shards); without it, "
                        "such a destination is refused")
    p.add_argument("--tars-only", action="store_true",
                   help="publish the tars and the webdataset card only, without the Hub's Parquet view")
    add_config_arguments(p, default_help="built-in defaults; only the remote section matters here")


def run(args: argparse.Namespace) -> int:
    opts = load_config(args.config, args.overrides).remote.options()
    def hub_view(build: Path, manifest: Manifest) -> None:
        written, kept = write_hub_view(build, manifest)
        print(f"publish: Hub view: {written} Parquet table(s) written, {kept} already there", flush=True)

    done = publish(args.build_dir, args.dest, opts, say=lambda line: print(line, flush=True),
                   replace=args.replace, prepare=None if args.tars_only else hub_view)
    print(f"publish: {len(done.uploaded)} file(s) uploaded, {len(done.kept)} already there; {args.dest} verified: "
          f"{done.shards} shards, {done.samples} samples OK", flush=True)
    return 0
