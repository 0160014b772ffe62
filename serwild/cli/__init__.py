"""``serwild``: one command, a subcommand per stage; this package is the only CLI layer.

    serwild synth    --out corpora/synth --size demo        # synthetic corpus, IEMOCAP layout
    serwild build    --config configs/demo.yaml [k=v …]  # Ray: corpus → WebDataset shards
    serwild verify   shards/demo                         # sha256 + counts vs the manifest
    serwild train    --config configs/demo.yaml [--nproc N] [--cv] [--resume] [k=v …]
    serwild evaluate --checkpoint runs/<name>/best.pt    # per-condition tables and plots
    serwild compare  runs/a runs/b                       # the paper's Figures 4/5
    serwild predict  --checkpoint best.pt rec.wav …      # emotions of your own recordings
    serwild serve    --model exports/demo-augmented      # a local page: the microphone's live timeline
    serwild demo                                         # the whole story, end to end
    serwild reproduce --config configs/protocol-tiny.yaml  # the paper's protocol, resumable

Each subcommand is a module here (``serwild.cli.build`` …) with ``add_arguments(parser)``
and ``run(args)`` over library functions. Only the invoked command's module is imported,
so ``serwild --help`` stays fast and ``serwild verify`` never loads torch. A user's mistake
(:class:`UsageError`, including config errors) is one ``serwild <cmd>: error: …`` line and
exit status 2; input that cannot be read now though nothing typed is wrong (a server that does
not answer after the retries: :class:`~serwild.errors.UnavailableError`) is one line and 1.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Any

from serwild import __version__
from serwild.errors import Terminated, said

# name → one-line help; the module is serwild.cli.<name>.
COMMANDS: dict[str, str] = {
    "synth": "write the synthetic corpus (IEMOCAP layout) and noise WAVs",
    "build": "render clean + noisy spectrograms into WebDataset shards (Ray)",
    "config": "show the resolved config, each key described (config show [--config X] [k=v …]); list installed",
    "verify": "check a build's shards against its manifest (sha256, counts)",
    "publish": "upload a build to a folder, s3:// or hf:// (shards first, manifest last; resumable)",
    "train": "fine-tune AlexNet on the shards (launches torchrun)",
    "evaluate": "score a checkpoint on every test condition",
    "compare": "compare runs: weighted F1 per test condition",
    "predict": "emotion of each 1 s block of your own WAV files",
    "listen": "emotion of each 1 s block of a live stream on stdin (WAV or raw PCM), as it arrives",
    "serve": "a local web page and API: live emotion timeline from the browser's microphone, JSON endpoints",
    "export": "a trained model as a small folder (safetensors, config, model card) to share or load",
    "figure": "a paper figure from a build: spectrograms (one test block clean and noisy, Figure 2)",
    "demo": "synth → build → train clean/augmented → evaluate → compare",
    "reproduce": "the paper's protocol: build → CV of both experiments per dataset → test → one report",
}


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serwild",
        description="Noise-robust speech emotion recognition (jet spectrograms + AlexNet).",
        epilog="Run `serwild <command> --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"serwild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one subcommand (imports only that command's module)."""
    module = importlib.import_module(f"serwild.cli.{name}")
    p = argparse.ArgumentParser(prog=f"serwild {name}", description=(module.__doc__ or COMMANDS[name]).strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(_run=module.run, command=name)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top_parser().parse_args(argv)  # prints help / version / the usage error and exits
        return 2
    # Intermixed: `serwild train --resume train.epochs=2` (overrides after flags) parses.
    args = command_parser(argv[0]).parse_intermixed_args(argv[1:])
    previous = _stop_on_sigterm()
    try:
        return int(args._run(args) or 0)
    except BaseException as e:  # the one map (serwild.errors.said); a bug keeps its traceback
        if (s := said(e)) is None:
            raise
        hint = RESUME_HINT.get(args.command, "") if isinstance(e, Terminated) else ""
        print(f"serwild {args.command}: {s.line}{hint}", file=sys.stderr)
        return s.code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


RESUME_HINT = {"build": "; run the same command again to resume", "train": "; continue with --resume",
               "reproduce": "; run the same command again to resume", "demo": "; run the same command again to resume"}


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _stop_on_sigterm() -> Any:
    """Install the SIGTERM handler (main thread only); the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    raise SystemExit(main())
