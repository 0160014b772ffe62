"""Publishing to a folder: the destination ends holding exactly the build, or is refused.

Another build's shards at the destination (refused, or deleted with ``--replace``), a symbolic
link inside it (refused: nothing is written through it), a full disk (a real tmpfs: one line,
no temp file) and a temp file a killed publish left (removed at the next run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serwild.cli import main
from serwild.data import hubtables
from serwild.data.manifest import load_manifest
from tests.evaluate.conftest import write_build
from tests.faults.procs import full_disk, one_line


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _expected(build: Path) -> set[str]:
    """The shards, the Hub's Parquet view of each, the card and the manifest."""
    m = load_manifest(build)
    return ({r.path for r in m.shards} | {hubtables.table_path(r.path) for r in m.shards}
            | {"README.md", "manifest.json"})


@pytest.fixture
def builds(tmp_path: Path) -> tuple[Path, Path]:
    a = write_build(tmp_path / "a", {"clean": (None, [3, 2]), "snr15": (15.0, [2]), "snr20": (20.0, [2])}, seed=1)
    b = write_build(tmp_path / "b", {"clean": (None, [4])}, seed=2)
    return a, b


def test_publish_onto_another_build_is_refused_or_replaced_whole(builds: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    a, b = builds
    dest = tmp_path / "pub"
    assert main(["publish", str(a), str(dest)]) == 0
    assert _files(dest) == _expected(a)
    capsys.readouterr()
    before = {f: (dest / f).read_bytes() for f in _files(dest)}
    rc = main(["publish", str(b), str(dest)])
    n = len(_files(dest) - _expected(b))  # a's shards and tables that b does not have
    assert n >= 3
    one_line(capsys.readouterr().err, rc, 2, f"{dest} holds {n} file(s) that are not this build's",
             "pass --replace to delete them")
    assert {f: (dest / f).read_bytes() for f in _files(dest)} == before  # nothing touched
    assert main(["publish", str(b), str(dest), "--replace"]) == 0
    assert f"deleted {n} file(s) of another build (--replace)" in capsys.readouterr().out
    assert _files(dest) == _expected(b)  # exactly the build: no stale shard for a glob reader or verify
    assert main(["verify", str(dest)]) == 0


def test_publish_never_writes_through_a_link_and_leaves_no_temp(builds: tuple[Path, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = builds
    dest, elsewhere = tmp_path / "pub", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "ahsn").symlink_to(elsewhere)
    rc = main(["publish", str(a), str(dest)])
    one_line(capsys.readouterr().err, rc, 2, "ahsn is a symbolic link; publish never writes through a link")
    assert list(elsewhere.iterdir()) == []
    (dest / "ahsn").unlink()

    # a temp file of a killed publish (its PID no longer runs) goes at the next run
    (dest / "ahsn" / "test").mkdir(parents=True)
    stale = dest / "ahsn" / "test" / ".clean-000000.tar.tmp-999999999"
    stale.write_bytes(b"cut")
    assert main(["publish", str(a), str(dest)]) == 0
    assert not stale.exists() and _files(dest) == _expected(a)


def test_a_full_disk_publish_is_one_line_and_leaves_no_temp(builds: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = builds
    size = sum(f.stat().st_size for f in a.rglob("*.tar"))
    with full_disk(tmp_path / "disk", f"{max(8, size // 2048)}k") as (disk, limit):
        if limit is not None:
            pytest.skip("no tmpfs can be mounted here (not root): the full-disk publish needs a real small disk")
        rc = main(["publish", str(a), str(disk / "pub")])
        line = one_line(capsys.readouterr().err, rc, 2)
        assert "no space left on device" in line.lower(), line
        assert [p for p in (disk / "pub").rglob("*") if ".tmp-" in p.name] == []
        assert not (disk / "pub" / "manifest.json").exists()
    assert os.path.exists(a / "manifest.json")


def test_a_published_build_names_no_folder_of_this_machine(builds: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest's config and rejects.jsonl hold this machine's absolute paths (the corpus,
    the noise folder, the build itself); the published copies hold them relative to the corpus
    or noise folder, or just their last part. The fingerprint and every shard are the same."""
    a, _ = builds
    corpus, noise = tmp_path / "home" / "alice" / "corpus", tmp_path / "home" / "alice" / "noise"
    m = json.loads((a / "manifest.json").read_text())
    m["config"].update(out=str(a))
    m["config"]["corpus"]["root"], m["config"]["noise"]["dir"] = str(corpus), str(noise)
    (a / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    rejects = [{"item": "list.csv:3", "path": str(corpus / "s1" / "x.wav"), "reason": "audio file missing",
                "stage": "corpus", "block": None},
               {"item": str(noise / "hum.wav"), "path": str(noise / "hum.wav"), "reason": "silent", "stage": "noise",
                "block": None},
               {"item": "u9", "path": "/mnt/elsewhere/y.wav", "reason": "unreadable", "stage": "audio", "block": None}]
    (a / "rejects.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    dest = tmp_path / "pub"
    assert main(["publish", str(a), str(dest)]) == 0
    for name in ("manifest.json", "rejects.jsonl"):
        assert str(tmp_path) not in (dest / name).read_text(), name
    got = json.loads((dest / "manifest.json").read_text())
    assert got["config"]["corpus"]["root"] == "corpus" and got["config"]["noise"]["dir"] == "noise"
    assert got["config"]["out"] == a.name and got["fingerprint"] == m["fingerprint"]
    assert [json.loads(x)["path"] for x in (dest / "rejects.jsonl").read_text().splitlines()] == [
        "corpus/s1/x.wav", "noise/hum.wav", "y.wav"]
    assert main(["verify", str(dest)]) == 0
    capsys.readouterr()
    assert main(["publish", str(a), str(dest)]) == 0  # a rerun finds every file already there
    out = capsys.readouterr().out
    assert "publish: Hub view: 0 Parquet table(s) written, 4 already there" in out
    assert f"publish: 0 file(s) uploaded, {len(_expected(a)) + 1} already there" in out  # + rejects.jsonl
