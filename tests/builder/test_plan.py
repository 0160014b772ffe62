"""Split plans (block / utterance / session), fold assignment and noise pools."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from serwild.builder.corpus import read_corpus
from serwild.builder.plan import condition_name, plan_shards
from serwild.builder.scan import scan_chunk, scan_noise
from serwild.config import ConfigError
from tests.builder.conftest import tree_config


def _plan(tmp_path: Path, **over: object):
    cfg = tree_config(tmp_path, datasets="[ahsn]", **over)
    utts, _ = read_corpus(cfg.corpus, cfg.datasets)
    scanned, _ = scan_chunk(utts, cfg.audio)
    noises, _ = scan_noise(Path(cfg.noise.dir), cfg.audio, cfg.noise.test_fraction)
    return cfg, noises, plan_shards(scanned, noises, cfg)


def _samples(specs):
    return [s for spec in specs for s in spec.samples]


def test_condition_names_have_no_dots() -> None:
    assert [condition_name(x) for x in (None, 15.0, 7.5, -5.0)] == ["clean", "snr15", "snr7p5", "snrm5"]


@pytest.mark.parametrize("strategy", ["block", "utterance", "speaker", "session"])
def test_every_condition_of_a_block_shares_split_and_fold(tmp_path: Path, strategy: str) -> None:
    extra = {"split.test_sessions": "[Ses05]"} if strategy == "session" else {}
    cfg, _, specs = _plan(tmp_path, **{"split.strategy": strategy, "split.folds": 3, **extra})
    where = defaultdict(set)
    for s in _samples(specs):
        where[(s.utterance, s.block)].add((s.split, s.fold))
        assert s.key == f"{s.utterance}_b{s.block:03d}_{s.condition}" and "." not in s.key
    assert all(len(v) == 1 for v in where.values())
    conds = defaultdict(set)
    for s in _samples(specs):
        conds[(s.utterance, s.block)].add(s.condition)
    assert all(c == {"clean", "snr15", "snr20", "snr40"} for c in conds.values())
    splits = [next(iter(v))[0] for v in where.values()]
    assert 0.1 < splits.count("test") / len(splits) < 0.35


def test_utterance_split_keeps_utterances_whole(tmp_path: Path) -> None:
    _, _, specs = _plan(tmp_path, **{"split.strategy": "utterance"})
    split_of = defaultdict(set)
    for s in _samples(specs):
        split_of[s.utterance].add((s.split, s.fold))
    assert all(len(v) == 1 for v in split_of.values())


def test_session_split_is_speaker_independent(tmp_path: Path) -> None:
    _, _, specs = _plan(tmp_path, **{"split.strategy": "session", "split.test_sessions": "[Ses05]", "split.folds": 4})
    samples = _samples(specs)
    assert {s.session for s in samples if s.split == "test"} == {"Ses05"}
    assert "Ses05" not in {s.session for s in samples if s.split == "train"}
    folds_of_speaker = defaultdict(set)
    for s in samples:
        if s.split == "train":
            folds_of_speaker[s.speaker].add(s.fold)
    assert all(len(f) == 1 for f in folds_of_speaker.values())
    # validation by default: whole speakers of the train sessions, in neither train nor test
    val = {s.speaker for s in samples if s.split == "validation"}
    assert val and not val & set(folds_of_speaker) and {s.session for s in samples if s.split == "validation"} != {
        "Ses05"}
    # 10 speakers: Ses05's 2 are test, one of the other 8 validation
    with pytest.raises(ConfigError, match="only 7 speakers"):
        _plan(tmp_path / "again", **{"split.strategy": "session", "split.test_sessions": "[Ses05]", "split.folds": 9})


def test_test_noise_never_overlaps_training_noise(tmp_path: Path) -> None:
    _, noises, specs = _plan(tmp_path)
    split_at = {n.name: n.split_at for n in noises}
    used = set()
    for s in _samples(specs):
        if s.snr_db is None:
            assert s.noise is None and s.noise_offset is None
            continue
        used.add(s.noise)
        if s.split in ("train", "validation"):  # validation is development data: never test noise
            assert s.noise_offset + 16000 <= split_at[s.noise]
        else:
            assert s.noise_offset >= split_at[s.noise]
    assert used == set(split_at)


def test_plan_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    _, _, a = _plan(tmp_path / "a")
    _, _, b = _plan(tmp_path / "b")
    _, _, c = _plan(tmp_path / "c", seed=1)
    key = lambda specs: [(sp.path, [(s.key, s.noise, s.noise_offset) for s in sp.samples]) for sp in specs]  # noqa: E731
    assert key(a) == key(b) != key(c)


@pytest.mark.parametrize("strategy", ["block", "utterance", "speaker"])
def test_validation_is_held_out_of_train_as_test_is(tmp_path: Path, strategy: str) -> None:
    """split.validation_fraction (default 0.1) takes a seeded part of train, drawn as the test part is
    (blocks, whole utterances, whole speakers), the same units in every condition; 0 takes none."""
    _, _, specs = _plan(tmp_path / "a", **{"split.strategy": strategy, "split.folds": 3})
    samples = [s for s in _samples(specs) if s.condition == "clean"]
    val = [s for s in samples if s.split == "validation"]
    train = [s for s in samples if s.split == "train"]
    assert val and all(s.fold is None for s in val)
    assert 0.03 < len(val) / (len(val) + len(train)) < 0.3
    unit = {"block": lambda s: (s.utterance, s.block), "utterance": lambda s: s.utterance,
            "speaker": lambda s: s.speaker}[strategy]
    assert not {unit(s) for s in val} & {unit(s) for s in train}
    noisy = {(s.utterance, s.block) for s in _samples(specs) if s.split == "validation" and s.condition == "snr15"}
    assert noisy == {(s.utterance, s.block) for s in val}
    _, _, none = _plan(tmp_path / "b", **{"split.strategy": strategy, "split.folds": 3, "split.validation_fraction": 0})
    assert {s.split for s in _samples(none)} == {"train", "test"}
