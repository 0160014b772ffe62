"""Label sets ("views"): which corpus labels a dataset uses, under which class names, in which order.

The order of a view's classes is the class index a model is trained on; ``ahsn`` and ``aesn`` are built in, any
other view is config (docs/corpora.md). Labels are compared by their canonical spelling (:func:`canonical_label`),
so a CSV saying ``Happy`` and a view saying ``hap`` agree, while the class keeps the name the view gives it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serwild.text import MAX_CLASSES, MAX_LABEL_CHARS

if TYPE_CHECKING:
    from serwild.builder.config import ViewConfig

# Spelled-out labels seen in other corpora's metadata (RAVDESS, CREMA-D, TESS, EmoDB, own recordings).
LABEL_ALIASES = {
    "anger": "ang", "angry": "ang", "happy": "hap", "happiness": "hap", "joy": "hap",
    "excited": "exc", "excitement": "exc", "sad": "sad", "sadness": "sad",
    "neutral": "neu", "frustrated": "fru", "frustration": "fru", "surprise": "sur",
    "surprised": "sur", "fear": "fea", "fearful": "fea", "disgust": "dis", "other": "oth",
}
# The paper's two 4-class views of IEMOCAP; the order is the class index (today's bytes).
PRESETS: dict[str, tuple[str, ...]] = {
    "ahsn": ("ang", "hap", "sad", "neu"),
    "aesn": ("ang", "exc", "sad", "neu"),
}
VIEW_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a folder name and a hub config name


def canonical_label(raw: str) -> str:
    """``' Happy '`` → ``hap``; a label with no alias is kept, lower-cased (``calm``)."""
    s = raw.strip().lower()
    return LABEL_ALIASES.get(s, s)


@dataclass(frozen=True)
class View:
    name: str
    classes: tuple[str, ...]
    index: Mapping[str, int]  # canonical corpus label → class index
    allow_empty: bool = False

    def class_of(self, label: str) -> int | None:
        """The class index of a corpus label (any spelling), or None if the view does not use it."""
        return self.index.get(canonical_label(label))


def make_view(name: str, classes: Iterable[str], merge: Mapping[str, str] | None = None,
              allow_empty: bool = False) -> View:
    """A checked view; ValueError (naming ``views.<name>``) for a bad class list or merge."""
    classes = tuple(classes)
    where = f"config key 'views.{name}"
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise ValueError(f"{where}.classes' needs 2..{MAX_CLASSES} classes, got {len(classes)}")
    index: dict[str, int] = {}
    for i, c in enumerate(classes):
        if not c.strip() or len(c) > MAX_LABEL_CHARS or not c.isprintable():
            raise ValueError(f"{where}.classes': class names are 1..{MAX_LABEL_CHARS} printable characters, "
                             f"got {c[:80]!r}")
        key = canonical_label(c)
        if key in index:
            raise ValueError(f"{where}.classes': {classes[index[key]]!r} and {c!r} are the same label")
        index[key] = i
    for label, target in (merge or {}).items():
        key = canonical_label(label)
        if key in index and classes[index[key]] != target:
            raise ValueError(f"{where}.merge': {label!r} is a class of the view; it cannot be merged into another")
        if canonical_label(target) not in index:
            raise ValueError(f"{where}.merge': {label!r} → {target!r}, which is not one of its classes "
                             f"({', '.join(classes)})")
        index[key] = index[canonical_label(target)]
    return View(name, classes, index, allow_empty)


def resolve_views(datasets: Iterable[str], defined: Mapping[str, ViewConfig]) -> dict[str, View]:
    """The views a build makes, in ``datasets`` order: a view defined in the config, else a preset."""
    out: dict[str, View] = {}
    for name in datasets:
        if name in defined:
            v = defined[name]
            out[name] = make_view(name, v.classes, v.merge, v.allow_empty)
        elif name in PRESETS:
            out[name] = make_view(name, PRESETS[name])
        else:
            raise ValueError(f"config key 'datasets': {name!r} is neither a built-in view "
                             f"({', '.join(PRESETS)}) nor defined under 'views:'"
                             + (f" (defined: {', '.join(defined)})" if defined else ""))
    return out
