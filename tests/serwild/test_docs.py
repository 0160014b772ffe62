"""The README is the front door: every page of docs/ is reachable from it, and every relative
link in the README, the docs and the CHANGELOG points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if "://" not in t]


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    linked = {(REPO / t).resolve() for t in _links(REPO / "README.md")}
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages and [p.name for p in pages if p.resolve() not in linked] == []


def test_relative_links_resolve() -> None:
    broken = [(page.name, t) for page in [REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")]
              for t in _links(page) if not (page.parent / t).exists()]
    assert broken == []
