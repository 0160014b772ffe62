"""Write the synthetic corpus (IEMOCAP's layout and label files) and classroom noise WAVs.

    serwild synth --out corpora/synth --size demo      # ~560 utterances, 4 noise files
    serwild synth --out corpora/full --size full       # IEMOCAP-sized (~10k blocks per set)

The same seed gives the same bytes. Speech emotion is carried by prosody (F0, range, rate,
tilt, breathiness, jitter) of 10 synthetic voices; nothing about IEMOCAP's real numbers
can be learnt from it: it exists so every stage runs without the licensed corpus.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serwild.synth.corpus import SIZES, format_summary, write_synthetic_corpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="corpora/synth", metavar="DIR",
                   help="where to write IEMOCAP_full_release/ and noise/ (default: corpora/synth)")
    p.add_argument("--size", choices=sorted(SIZES), default="demo",
                   help="tiny (tests), demo (default; ~800 AHSN blocks) or full (IEMOCAP-sized)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default: 0)")
    p.add_argument("--force", action="store_true", help="replace a corpus already in --out")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes rendering audio (default: all cores for full, else 1); same bytes")


def run(args: argparse.Namespace) -> int:
    s = write_synthetic_corpus(Path(args.out), args.size, args.seed, overwrite=args.force, workers=args.workers)
    print(format_summary(s))
    return 0
