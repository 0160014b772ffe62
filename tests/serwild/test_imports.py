"""Imports flow one way, in the order data flows: a room may import only the rooms below it.

    core (serwild/*.py) ← processes ← data ← builder, trainer;  core ← synth ← builder;
    trainer ← evaluate ← pipelines ← cli;  evaluate ← deploy ← serve ← cli

The one exception is by design: ``serwild.config`` composes each stage's config section
(``serwild.<room>.config``, leaf modules that import only ``serwild.bounds``, their ranges).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOM_DIRS = {"serwild": "core", "synth": "synth", "builder": "builder", "data": "data", "trainer": "trainer",
             "evaluate": "evaluate", "deploy": "deploy", "pipelines": "pipelines", "configs": "configs",
             "serve": "serve", "processes": "processes"}
ALLOWED = {
    "core": {"core"},
    "configs": set(),
    "processes": {"core", "processes"},
    "synth": {"core", "synth"},
    "data": {"core", "processes", "data"},
    "builder": {"core", "processes", "synth", "data", "builder"},
    "trainer": {"core", "processes", "data", "trainer"},
    "evaluate": {"core", "processes", "data", "builder", "trainer", "evaluate"},
    "deploy": {"core", "processes", "data", "builder", "trainer", "evaluate", "deploy"},
    "pipelines": {"core", "processes", "synth", "data", "builder", "trainer", "evaluate", "pipelines", "configs"},
    "serve": {"core", "processes", "data", "builder", "trainer", "deploy", "serve"},
    "cli": {"core", "processes", "synth", "data", "builder", "trainer", "evaluate", "deploy", "pipelines", "configs",
            "serve", "cli"},
}


def room_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "serwild":
        return None
    if len(parts) == 1 or parts[1] not in {"synth", "builder", "data", "trainer", "evaluate", "deploy",
                                           "pipelines", "configs", "serve", "cli", "processes"}:
        return "core"
    return parts[1]


def room_of_file(path: Path) -> str:
    rel = path.relative_to(REPO)
    if rel.parts[0] == "serwild" and (rel.parts[1] == "cli" or rel.name == "__main__.py"):
        return "cli"  # the command line, and `python -m serwild`
    return ROOM_DIRS[rel.parts[0]]


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_every_import_points_down_the_data_flow() -> None:
    bad = []
    for folder in ROOM_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            room = room_of_file(path)
            for name in imports(path):
                target = room_of_module(name)
                if target is None or target in ALLOWED[room]:
                    continue
                if path == REPO / "serwild" / "config.py" and name.split(".")[2:3] == ["config"]:
                    continue  # the composed config: each stage's section, by design
                bad.append(f"{path.relative_to(REPO)} ({room}) imports {name} ({target})")
    assert not bad, "\n".join(bad)
