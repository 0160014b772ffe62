"""``serwild``: one command, a subcommand per stage.

    serwild synth    --out data/synth --size demo        # synthetic corpus, IEMOCAP layout
    serwild build    --config configs/demo.yaml [k=v …]  # Ray: corpus → WebDataset shards
    serwild verify   shards/demo                         # sha256 + counts vs the manifest
    serwild train    --config configs/demo.yaml [--nproc N] [--cv] [--resume] [k=v …]
    serwild evaluate --checkpoint runs/<name>/best.pt    # per-condition tables and plots
    serwild compare  runs/a runs/b                       # the paper's Figures 4/5
    serwild predict  --checkpoint best.pt rec.wav …      # emotions of your own recordings
    serwild demo                                         # the whole story, end to end

Each subcommand lives in its stage's module as ``add_arguments(parser)`` + ``run(args)``;
this file only dispatches, and turns a user's mistake (:class:`UsageError`, including
config errors) into one ``serwild: error: …`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from serwild import __version__
from serwild.errors import UsageError

# name → (module, one-line help). Modules keep heavy imports (torch, ray) inside run().
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("serwild.builder.synth", "write the synthetic corpus (IEMOCAP layout) and noise WAVs"),
    "build": ("serwild.builder.build", "render clean + noisy spectrograms into WebDataset shards (Ray)"),
    "verify": ("serwild.builder.verify", "check a build's shards against its manifest (sha256, counts)"),
    "train": ("serwild.trainer.launch", "fine-tune AlexNet on the shards (launches torchrun)"),
    "evaluate": ("serwild.evaluate.evaluate", "score a checkpoint on every test condition"),
    "compare": ("serwild.evaluate.compare", "compare runs: weighted F1 per test condition"),
    "predict": ("serwild.evaluate.predict", "emotion of each 1 s block of your own WAV files"),
    "demo": ("serwild.evaluate.demo", "synth → build → train clean/augmented → evaluate → compare"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serwild",
        description="Noise-robust speech emotion recognition (jet spectrograms + AlexNet).",
        epilog="Run `serwild <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"serwild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or help_text).strip()
        p = sub.add_parser(name, help=help_text, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        print(f"serwild {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"serwild {args.command}: interrupted", file=sys.stderr)
        return 130


def add_config_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--config FILE`` and trailing ``key=value`` overrides, shared by build/train/demo."""
    p.add_argument("--config", required=required, metavar="FILE",
                   help="YAML config (see configs/; default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, values in YAML: split.strategy=session snr_db='[15,20]'")


if __name__ == "__main__":
    raise SystemExit(main())
