"""Speaker-independent splits by a fraction (``split.strategy: speaker``): seeded, grouped by
speaker, stratified by class; the held-out speakers printed and recorded (manifest, card); a
split that cannot be made is refused before any audio is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from serwild.cli import main
from serwild.progress import LOG_LINE
from tests.builder.conftest import tone

SR = 16000


def _corpus(root: Path, speakers: int, per_class: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(speakers):
        for c, label in enumerate(("ang", "hap")):
            for k in range(per_class):
                name = f"spk{s}_{label}_{k}.wav"
                sf.write(root / name, tone(1.2, 120.0 + 9 * s + 40 * c + 3 * k, seed=100 * s + 10 * c + k), SR)
                rows.append(f"{name},{label},spk{s}")
    (root / "list.csv").write_text("path,label,speaker\n" + "".join(r + "\n" for r in rows))
    return root / "list.csv"


def _build(listing: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--serial", "corpus.kind=csv", f"corpus.root={listing}", f"out={out}", "snr_db=[]",
            "views.two.classes=[ang, hap]", "datasets=[two]", "split.strategy=speaker", "split.test_fraction=0.25",
            "split.folds=2", *extra]


def test_a_speaker_split_holds_out_whole_speakers_and_says_which(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    listing = _corpus(tmp_path / "corpus", speakers=6)
    assert main(_build(listing, tmp_path / "a")) == 0
    err = capsys.readouterr().err
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    held = m["split"]["datasets"]["two"]
    test, train, val = held["test_speakers"], held["train_speakers"], held["validation_speakers"]
    # validation by default: whole speakers of the train part, none of them in train or test
    assert test and train and val and len(set(test) | set(train) | set(val)) == len(test) + len(train) + len(val) == 6
    samples = [(r["split"], r["path"]) for r in m["shards"]]
    assert {s for s, _ in samples} == {"train", "validation", "test"}
    assert all(p.startswith("two/validation/") for s, p in samples if s == "validation")
    assert (f"split speaker: dataset two: test speakers {', '.join(test)} ({len(test)} of 6); "
            f"validation speakers {', '.join(val)} ({len(val)} of 6)") in err
    card = (tmp_path / "a" / "README.md").read_text()
    assert "speakers held out (seeded, stratified by class)" in card
    assert "validation fraction 0.1 of train held out the same way" in card
    assert f"`two` test speakers: {', '.join(f'`{x}`' for x in test)} ({len(test)} of 6)" in card
    assert f"`two` validation speakers: {', '.join(f'`{x}`' for x in val)} ({len(val)} of 6)" in card
    # the same seed, the same speakers
    assert main(_build(listing, tmp_path / "b")) == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["split"] == m["split"]


def test_a_speaker_split_that_cannot_be_made_is_refused_before_any_audio_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listing = _corpus(tmp_path / "corpus", speakers=3, per_class=1)
    assert main(_build(listing, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = [x for x in err if not LOG_LINE.match(x)]
    assert said == ["serwild build: error: split.strategy speaker of dataset 'two': 3 speaker(s), but holding out "
                    "0.25 of them needs at least 5 (one test group of 4, and a train part): add speakers, raise "
                    "split.test_fraction, or use split.strategy utterance"], err
    assert not any("scan audio" in x for x in err) and not (tmp_path / "out").exists()
    # an IEMOCAP default no longer leaks in: a session split names its sessions
    assert main(["build", "--serial", "split.strategy=session", f"out={tmp_path / 'x'}"]) == 2
    assert "split.strategy session holds out the sessions it names" in capsys.readouterr().err


def test_a_rerun_build_says_it_built_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `serwild build` of the same config finds every shard built: it says so, rather
    than "built N shards" as if it had rendered them again."""
    listing = _corpus(tmp_path / "corpus", speakers=6, per_class=1)
    args = _build(listing, tmp_path / "a")
    assert main(args) == 0
    first = capsys.readouterr().out
    n = len(json.loads((tmp_path / "a" / "manifest.json").read_text())["shards"])
    assert first.startswith(f"built {n} shards, ")
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"built 0 shards ({n} already there), ")
