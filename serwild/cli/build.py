"""Render clean and noisy jet spectrograms into WebDataset shards, with Ray.

    serwild build --config configs/demo.yaml
    serwild build --config configs/iemocap.yaml corpus.root=/data/IEMOCAP ray.num_cpus=16
    serwild build --config configs/iemocap.yaml ray.address=auto      # join a running Ray cluster

Stages: read the corpus → scan audio (Ray tasks) → plan every sample (driver, seeded) →
build shards (one Ray task per shard, progress bar) → manifest.json, rejects.jsonl,
README.md (the hub card: the folder uploads as is to a dataset hub). Running the same
command again resumes: shards already built from the same plan and still matching their
sha256 are kept, the rest are rebuilt.
"""

from __future__ import annotations

import argparse
import json

from serwild.builder.build import reject_summary, run_build
from serwild.cli.options import add_config_arguments
from serwild.config import load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--serial", action="store_true",
                   help="run every task in this process, without Ray (debugging, tiny corpora)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished build of another config in the out folder (its shards are rebuilt)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = run_build(cfg, executor="serial" if args.serial else "ray", overwrite=args.overwrite)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"built {len(manifest['shards'])} shards, {manifest['totals']['samples']} samples, "
          f"{manifest['totals']['rejects']} rejects → {out}")
    for reason, n in reject_summary(out / "rejects.jsonl").most_common():
        print(f"  {n:6d} × {reason}")
    return 0
