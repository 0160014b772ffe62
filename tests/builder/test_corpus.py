"""The IEMOCAP and CSV readers on generated trees with the real corpus's quirks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.builder.config import CorpusConfig
from serwild.builder.corpus import iemocap_speaker, parse_emo_evaluation, read_corpus, read_iemocap, unique_id
from serwild.errors import UsageError
from tests.builder.conftest import make_tree, write_dialog


def test_speaker_is_session_plus_last_token_gender() -> None:
    assert iemocap_speaker("Ses01F_impro01_M003") == ("Ses01M", "Ses01")
    assert iemocap_speaker("Ses03M_impro05a_F000") == ("Ses03F", "Ses03")
    assert iemocap_speaker("Ses05M_script01_1b_M012") == ("Ses05M", "Ses05")
    assert iemocap_speaker("garbage") is None


def test_reader_keeps_improvised_and_rejects_the_rest(corpus_tree: Path) -> None:
    utts, rejects = read_iemocap(corpus_tree, improvised_only=True)
    ids = {u.id for u in utts}
    reasons = {r.item: r.reason for r in rejects}
    assert "Ses03M_impro05a_F000" in ids  # lettered improvised dialog
    assert "Ses03M_impro05a_M001" in ids  # 'fru' parses; the dataset view filters it later
    assert reasons["Ses05M_script01_1b_F000"].startswith("scripted dialog")
    assert reasons["Ses01F_impro02_M000"] == "wav missing"
    u = next(u for u in utts if u.id == "Ses01F_impro01_M001")
    assert (u.speaker, u.session, u.label) == ("Ses01M", "Ses01", "hap")
    assert u.source == "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav"
    assert not ids & set(reasons)  # nothing is both used and rejected


def test_scripted_dialogs_kept_when_asked(corpus_tree: Path) -> None:
    utts, _ = read_iemocap(corpus_tree, improvised_only=False)
    assert "Ses05M_script01_1b_F000" in {u.id for u in utts}


def test_dataset_views_filter_labels(corpus_tree: Path) -> None:
    cfg = CorpusConfig(kind="iemocap", root=str(corpus_tree))
    utts, rejects = read_corpus(cfg, ["ahsn"])
    assert {u.label for u in utts} == {"ang", "hap", "sad", "neu"}
    exc = [r for r in rejects if "'exc' not in the selected datasets" in r.reason]
    assert len(exc) == 20  # 4 per session, 5 sessions
    utts2, _ = read_corpus(cfg, ["ahsn", "aesn"])
    assert {u.label for u in utts2} == {"ang", "hap", "exc", "sad", "neu"}


def test_every_label_code_parses(tmp_path: Path) -> None:
    codes = ["ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx"]
    release = tmp_path / "IEMOCAP_full_release"
    write_dialog(release, 2, "Ses02F_impro03", [(f"Ses02F_impro03_F{i:03d}", c, 1.5) for i, c in enumerate(codes)])
    txt = release / "Session2/dialog/EmoEvaluation/Ses02F_impro03.txt"
    assert [label for _, label in parse_emo_evaluation(txt)] == codes
    utts, rejects = read_iemocap(tmp_path)
    assert len(utts) == len(codes) and not rejects


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_iemocap(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no IEMOCAP_full_release"):
        read_iemocap(tmp_path / "empty")


def test_csv_manifest(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for level, name in ((0.1, "a/x.1.wav"), (0.2, "b.wav")):  # distinct audio: a copy would be rejected
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, np.zeros(16000, np.float32) + level, 16000)
    (tmp_path / "list.csv").write_text(
        "path,label,speaker,session\n"
        "a/x.1.wav,Angry,spk1,s1\n"
        "b.wav,neutral,spk2,\n"
        "b.wav,confused,spk2,s2\n"
        "missing.wav,sad,spk3,s3\n")
    utts, rejects = read_corpus(CorpusConfig(kind="csv", root=str(tmp_path / "list.csv")), ["ahsn"])
    assert [(u.id, u.label, u.speaker, u.session) for u in utts] == [
        ("x-1", "ang", "spk1", "s1"), ("b", "neu", "spk2", "spk2")]
    # any label is read; a row whose label no view uses is a reject naming it, before it claims any audio
    assert sorted(r.reason for r in rejects) == [
        "audio file missing", "label 'confused' not in the selected datasets (ahsn: ang hap sad neu)"]


def test_unique_ids_have_no_dots_and_do_not_clash() -> None:
    seen: set[str] = set()
    a = unique_id(Path("x/take.1.wav"), seen)
    b = unique_id(Path("y/take.1.wav"), seen)
    assert "." not in a and "." not in b and a != b


def test_generated_tree_matches_header_format(tmp_path: Path) -> None:
    root = make_tree(tmp_path, per_class=1)
    txt = next((root / "IEMOCAP_full_release").glob("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"))
    assert txt.read_text().startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]")


def test_reject_summary_groups_reasons(tmp_path: Path) -> None:
    import json

    from serwild.builder.build import reject_summary

    rows = [("corpus", "label 'fru' not in the selected datasets (ahsn: ang hap sad neu)"),
            ("corpus", "label 'xxx' not in the selected datasets (ahsn: ang hap sad neu)"),
            ("audio", "shorter than one 1 s block (0.60 s)"), ("corpus", "wav missing")]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"stage": s, "reason": r}) + "\n" for s, r in rows))
    assert reject_summary(tmp_path / "r.jsonl") == {
        "corpus: label 'fru' in no selected dataset": 1, "corpus: label 'xxx' in no selected dataset": 1,
        "audio: shorter than one 1 s block …": 1,
        "corpus: wav missing": 1}
