"""Render clean and noisy jet spectrograms into WebDataset shards, with Ray.

    serwild build --config configs/demo.yaml
    serwild build --config configs/iemocap.yaml corpus.root=/data/IEMOCAP ray.num_cpus=16
    serwild build --config configs/iemocap.yaml ray.address=HEAD:6379 # join a running Ray cluster (or =auto)

Stages: read the corpus → scan audio (Ray tasks) → plan every sample (driver, seeded) →
build shards (one Ray task per shard, progress bar) → manifest.json, rejects.jsonl,
README.md (the hub card: the folder uploads as is to a dataset hub). Running the same
command again resumes: shards already built from the same plan and still matching their
sha256 are kept, the rest are rebuilt. Under nohup, Slurm or CI (stderr not a terminal) it
prints a time-stamped line per stage and progress lines (done/total, rate, ETA) instead of bars.

Your own corpus (corpus.kind=csv, corpus.root=list.csv): a UTF-8 CSV with a header line,

    path,label,speaker,session,start,end
    ravdess/03-01-02-01-01-01-01.wav,calm,actor01,actor01,,
    podcast/ep1.wav,happy,host,ep1,12.5,17.0      # a segment: seconds into the file
    podcast/ep1.wav,sad,guest,ep1,17.0,21.25      # many rows may share a file

path: relative to the CSV file; label: any spelling (ang/angry/Anger …, or a class of your views);
speaker required; session optional (default: the speaker); start,end optional (seconds; a segment
past the file's end, of zero length or overlapping another of the file is rejected, with its reason).
corpus.label_column names another label column. corpus.kind=audiofolder reads HF's audiofolder
layout: corpus.root is a folder with metadata.csv (file_name + a label column).

Label sets: datasets: [ahsn, aesn] are IEMOCAP's built-in views; define your own, e.g.

    views:
      ravdess: {classes: [neutral, calm, happy, sad, angry, fearful]}
      ahsn_merged: {classes: [ang, hap, sad, neu], merge: {exc: hap}}
    datasets: [ravdess]

A class with no training or test sample is refused before rendering; labels in no view are
listed in rejects.jsonl and counted per label. Example: configs/csv.yaml (serwild config show
--config csv).
"""

from __future__ import annotations

import argparse
import time

from serwild.builder.build import reject_summary, run_build
from serwild.cli.options import add_config_arguments
from serwild.config import load_config
from serwild.data.manifest import load_manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--serial", action="store_true",
                   help="run every task in this process, without Ray (debugging, tiny corpora)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished build of another config in the out folder (its shards are rebuilt)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    started = time.time()
    out = run_build(cfg, executor="serial" if args.serial else "ray", overwrite=args.overwrite)
    manifest = load_manifest(out)
    n = len(manifest.shards)
    # A shard written by this run is a new file (temp + rename); one older than the run was kept.
    kept = sum(1 for s in manifest.shards if (out / s.path).stat().st_mtime < started)
    done = f"built {n - kept} shards ({kept} already there)" if kept else f"built {n} shards"
    print(f"{done}, {manifest.totals['samples']} samples, {manifest.totals['rejects']} rejects → {out}")
    for reason, n in reject_summary(out / "rejects.jsonl").most_common():
        print(f"  {n:6d} × {reason}")
    return 0
