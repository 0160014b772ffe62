"""The rooms install under one namespace, claim no generic top-level names, and the CLI
really has every subcommand (its parsers are built, not just named in help text)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from serwild.cli import COMMANDS, command_parser, main, top_parser

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("synth", "builder", "data", "trainer", "evaluate", "pipelines")


def test_rooms_live_under_serwild_and_do_not_clobber(tmp_path: Path) -> None:
    # Run from an empty folder so the repo root is not on sys.path: this is what users see.
    code = (
        "import importlib, importlib.util, json\n"
        f"rooms = {ROOMS!r}\n"
        "import serwild.configs\n"
        "for r in rooms: __import__('serwild.' + r)\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in ('builder', 'trainer', 'synth')}))\n"
        "print(importlib.import_module('serwild.evaluate').__file__)\n"
        "print(serwild.configs.shipped('demo.yaml'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    claimed, evaluate_file, demo_yaml = out.stdout.strip().splitlines()
    assert '"builder": false' in claimed and '"trainer": false' in claimed and '"synth": false' in claimed
    assert Path(evaluate_file).resolve() == REPO / "evaluate" / "__init__.py"
    assert Path(demo_yaml).is_file()  # the demo's default config is found from any folder


def test_every_subcommand_has_a_parser_of_its_own() -> None:
    top = top_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS) == {"synth", "build", "verify", "train", "evaluate", "compare",
                                                 "predict", "listen", "demo", "reproduce", "publish", "export",
                                                 "config", "figure", "serve"}
    for name in COMMANDS:
        p = command_parser(name)
        assert callable(p.get_default("_run")) and p.prog == f"serwild {name}"
    # overrides after flags parse (intermixed), on every command that takes a config
    args = command_parser("train").parse_intermixed_args(["--resume", "train.epochs=2", "--nproc", "1"])
    assert args.resume and args.overrides == ["train.epochs=2"] and args.nproc == 1
    args = command_parser("build").parse_intermixed_args(["seed=1", "--serial", "out=x"])
    assert args.serial and args.overrides == ["seed=1", "out=x"]


def test_cli_help_runs_and_a_bad_command_is_one_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:  # argparse's --help exits 0 after printing
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and all(cmd in out for cmd in COMMANDS)
    with pytest.raises(SystemExit) as bad:
        main(["nope"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "invalid choice" in err and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(name: str) -> None:
    with pytest.raises(SystemExit) as e:
        command_parser(name).parse_args(["--help"])
    assert e.value.code == 0
