"""The emotion of each 1 s block of your own recordings, and of each whole recording.

    serwild predict --model exports/demo-augmented rec1.wav rec2.flac … [--json]
    serwild predict --checkpoint runs/<name>/best.pt rec.wav
    serwild predict --model runs/demo-augmented long.wav eval.batch_size=16 eval.device=cpu

``--model``: a folder written by ``serwild export`` (small, loads in about a second), or a
run folder (its best.pt); ``--checkpoint``: a training checkpoint. Loading says what it
loads, on stderr. Any sample rate, mono or stereo (channels are averaged). Each file is cut
and rendered exactly as the builder renders training data (the model's ``audio`` settings),
so the model sees what it was trained on; blocks are rendered and scored a batch at a time
(``eval.batch_size``), so memory does not grow with the recording's length. Silent blocks
are skipped, as the builder skips them. Per block: the class probabilities and the most
likely class; per file: the class of the mean of its block logits (as ``serwild evaluate``
scores utterances). A recording shorter than one block is padded with silence to one block
and scored, and the output says so (``padded_s``).

A file that is unreadable or silent gets a one-line message (on stderr, or an ``error`` entry
with ``--json``) and the other files are still scored. Exit status: 0 if every file was
scored, 1 if any file failed, 2 for a usage error (e.g. a missing model). A file whose name
contains ``=`` is given as ``./name=x.wav``. From Python: ``Predictor.from_pretrained(DIR)``
with ``predict_file(path)`` and ``predict_array(samples, sample_rate)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from serwild.cli.options import add_config_arguments, split_overrides
from serwild.config import load_config
from serwild.deploy.predict import format_result, predict_files
from serwild.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR",
                       help="an exported model folder (serwild export), or a run folder (its best.pt)")
    which.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by serwild train")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_config_arguments(p, positional_overrides=False)
    p.add_argument("inputs", nargs="+", metavar="AUDIO|key=value",
                   help="WAV (or FLAC/OGG) files, any rate, mono or stereo; and eval.* overrides")


def to_json(data: dict[str, Any]) -> str:
    """Strict JSON: a NaN or inf (which ``json.dumps`` would print bare, invalid JSON) is refused."""
    try:
        return json.dumps(data, indent=2, allow_nan=False)
    except ValueError as e:
        raise UsageError(f"refusing to print invalid JSON ({e})") from None


def run(args: argparse.Namespace) -> int:
    overrides, files = split_overrides(args.inputs)
    if not files:
        raise UsageError("give at least one audio file")
    settings = load_config(args.config, overrides).eval
    source = args.model or args.checkpoint
    results, classes = predict_files(source, files, device=settings.device, batch_size=settings.batch_size,
                                     verbose=True)
    if args.json:
        which = {"model": str(source)} if args.model else {"checkpoint": str(source)}
        print(to_json({**which, "classes": classes, "files": [asdict(r) for r in results]}))
    else:
        for r in results:
            if r.error is None:
                print(format_result(r, classes))
    for r in results:
        if r.error is not None:
            print(f"serwild predict: {r.file}: {r.error}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0
