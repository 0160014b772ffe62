"""Show the resolved config: every key with its value and one line saying what it is.

    serwild config show                                   # the built-in defaults
    serwild config show --config demo-tiny                # an installed config, by name
    serwild config show --config configs/csv.yaml corpus.root=my/list.csv

``--config NAME`` and ``--config configs/NAME.yaml`` find the config installed with serwild
when no such file is here (every command does this); the error lists the installed configs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from serwild.cli.options import add_config_arguments
from serwild.config import installed_configs, load_config, resolve_config_path, to_dict
from serwild.config_keys import describe_keys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "list"],
                   help="show: the resolved config, one described key a line; list: the installed configs")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, path in installed_configs().items():
            print(f"{name:20s} {path}")
        return 0
    path = resolve_config_path(args.config) if args.config else None
    cfg = load_config(path, args.overrides)
    print(f"# serwild config: {path or 'built-in defaults'}" + (f" + {' '.join(args.overrides)}" if args.overrides
                                                                else ""))
    notes = describe_keys()
    for line in format_config(to_dict(cfg), notes):
        print(line)
    return 0


def format_config(data: dict[str, Any], notes: dict[str, str], prefix: str = "", indent: int = 0) -> list[str]:
    """YAML-looking lines (``key: value  # what it is``), sections nested; values in JSON flow style,
    which YAML reads back."""
    out: list[str] = []
    pad = "  " * indent
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        note = notes.get(dotted) or notes.get(_wildcard(dotted), "")
        comment = f"  # {note}" if note else ""
        if isinstance(value, dict) and value and not _is_leaf_map(dotted, notes):
            out.append(f"{pad}{key}:{comment}")
            out += format_config(value, notes, f"{dotted}.", indent + 1)
        else:
            out.append(f"{pad}{key}: {json.dumps(value, ensure_ascii=False)}{comment}")
    return out


def _wildcard(dotted: str) -> str:
    """``views.ravdess.classes`` → ``views.*.classes`` (the key of a named entry's description);
    only a fallback, after the key's own description."""
    parts = dotted.split(".")
    return ".".join([parts[0], "*", *parts[2:]]) if len(parts) > 1 else dotted


def _is_leaf_map(dotted: str, notes: dict[str, str]) -> bool:
    """A mapping that is one value (``views.x.merge``), not a section of described keys."""
    return not any(k.startswith(dotted + ".") or k.startswith(_wildcard(dotted) + ".") for k in notes)
