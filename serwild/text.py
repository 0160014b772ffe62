"""Text in and out: files users hand us (configs, CSV lists: UTF-8, a byte-order mark allowed,
anything else one line naming the file, the byte and the line), the class names files may hold,
and paths made portable for what is shared (a published build, an exported model)."""

from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Any

from serwild.errors import UsageError


def decode_utf8(raw: bytes, what: str, error: type[UsageError] = UsageError) -> str:
    """``raw`` as text, without a leading BOM; ``what`` names the file in the error."""
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw[:at].count(b"\n") + 1
        raise error(f"{what} is not UTF-8 text (byte {at}, line {line}: {raw[at:at + 1]!r}); "
                    "save it as UTF-8") from None


MAX_CLASSES = 1000  # a view's classes, and what any file read back may name
MAX_LABEL_CHARS = 64


def class_names_problem(classes: object) -> str | None:
    """Why ``classes`` is not a list of class names (None: it is one): 2..MAX_CLASSES distinct,
    printable names of 1..MAX_LABEL_CHARS characters. Manifests, checkpoints and exports are
    read through this: a million names would size a layer of gigabytes before the weights are
    compared, a name given twice drops a class from ``probs``, and an escape sequence in a name
    would recolour the terminal or forge lines. Linear: a set, not a count per name."""
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        return "must be a list of class names"
    if not 2 <= len(classes) <= MAX_CLASSES:
        return f"must list 2..{MAX_CLASSES} class names, got {len(classes)}"
    bad = next((c for c in classes if not 1 <= len(c) <= MAX_LABEL_CHARS or not c.isprintable()), None)
    if bad is not None:
        return f"class names are 1..{MAX_LABEL_CHARS} printable characters, got {bad[:80]!r}"
    seen: set[str] = set()
    twice = sorted({c for c in classes if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if twice:
        return f"names {', '.join(map(repr, twice[:5]))} more than once"
    return None


def portable_path(text: str, roots: list[Path]) -> str:
    """``text`` as a stranger may read it: an absolute path under one of ``roots`` becomes
    ``<root's name>/<the rest>``, any other absolute path its last part; the rest is unchanged."""
    if not os.path.isabs(text):
        return text
    path = Path(text)
    for root in roots:
        if path.is_relative_to(root):
            return str(Path(root.name) / path.relative_to(root))
    return path.name


def portable_json(value: Any, roots: list[Path]) -> Any:
    """``value`` (JSON-like data) with every string made portable (:func:`portable_path`)."""
    if isinstance(value, str):
        return portable_path(value, roots)
    if isinstance(value, dict):
        return {k: portable_json(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_json(v, roots) for v in value]
    return value
