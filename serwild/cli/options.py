"""Arguments several commands share."""

from __future__ import annotations

import argparse
import re

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def add_config_arguments(p: argparse.ArgumentParser, default_help: str = "built-in defaults",
                         positional_overrides: bool = True) -> None:
    """``--config FILE`` and ``key=value`` overrides (anywhere on the line)."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"YAML config (see configs/; default: {default_help})")
    if positional_overrides:
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, values in YAML: split.strategy=session snr_db='[15,20]'")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(``key=value`` overrides, other arguments) from one positional list.

    For commands whose positionals are files (predict, compare): an item is an override
    when it starts with a dotted name and ``=``; a file whose name has an ``=`` can be given
    as ``./name=x.wav``.
    """
    overrides = [x for x in items if KEY.match(x)]
    return overrides, [x for x in items if not KEY.match(x)]
