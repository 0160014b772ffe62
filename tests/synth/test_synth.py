"""`serwild synth`: IEMOCAP's layout and label format, audio format, determinism, noise, and
that emotion is carried by the audio (learnable, but with overlapping classes).

The parser here is written from the real corpus's format, independently of the reader in
builder/corpus.py, so the generator is pinned to IEMOCAP and not to our own reader.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.cli import main
from serwild.synth.corpus import plan_corpus

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
SUMMARY = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0([1-5])[FM]_(impro\d\d[ab]?|script\d\d_\d[ab]?)"
                     r"_([FM])\d{3})\t([a-z]{3})\t\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$")
CATEGORICAL = re.compile(r"^(C-(?:E[1-4]|[FM]1)):\t((?:[A-Z][a-z]+; )*[A-Z][a-z]+);\t\([a-z ]*\)$")
DIMENSIONAL = re.compile(r"^A-(?:E[1-4]|[FM]1):\tval [1-5]; act [1-5]; dom  [1-5];\t\([a-z ]*\)$")
NAMES = {"ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "neu": "Neutral"}
FIVE = ("ang", "hap", "exc", "sad", "neu")


def parse(root: Path) -> list[dict]:
    """Every utterance of every EmoEvaluation file, checking the format line by line."""
    utts = []
    files = sorted((root / "IEMOCAP_full_release").glob("Session*/dialog/EmoEvaluation/*.txt"))
    assert files
    for path in files:
        lines = path.read_text().split("\n")
        assert lines[0] == HEADER and lines[1] == "", path
        blocks = "\n".join(lines[2:]).strip("\n").split("\n\n")
        last_end = 0.0
        for block in blocks:
            head, *raters = block.split("\n")
            m = SUMMARY.match(head)
            assert m, f"{path.name}: bad summary line {head!r}"
            start, end = float(m.group(1)), float(m.group(2))
            assert last_end <= start < end, f"{path.name}: times must increase ({head!r})"
            last_end = end
            cats = [CATEGORICAL.match(r) for r in raters if r.startswith("C-")]
            assert all(cats) and len(cats) >= 3, f"{path.name}: bad categorical lines {raters}"
            assert all(DIMENSIONAL.match(r) for r in raters if r.startswith("A-")), raters
            assert len(cats) + sum(r.startswith("A-") for r in raters) == len(raters), raters
            uid = m.group(3)
            assert uid.rsplit("_", 1)[0] == path.stem and path.parts[-4] == f"Session{m.group(4)}"
            utts.append({"uid": uid, "dialog": path.stem, "session": int(m.group(4)), "start": start,
                         "end": end, "label": m.group(7), "scripted": "script" in m.group(5),
                         "speaker": f"Ses0{m.group(4)}{m.group(6)}",
                         "votes": [c.group(2).split("; ")[0] for c in cats if c.group(1).startswith("C-E")],
                         "wav": root / "IEMOCAP_full_release" / path.parts[-4] / "sentences" / "wav"
                         / path.stem / f"{uid}.wav"})
    return utts


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tiny_corpus: Path) -> tuple[Path, dict, list[dict]]:
    """The session's tiny corpus (tests/conftest.py: ``write_synthetic_corpus(root, "tiny", seed=0)``),
    its summary as written to SYNTH.json, and its label files parsed."""
    return tiny_corpus, json.loads((tiny_corpus / "SYNTH.json").read_text()), parse(tiny_corpus)


def test_layout_and_every_wav_listed(tiny: tuple[Path, dict, list[dict]]) -> None:
    root, _, utts = tiny
    release = root / "IEMOCAP_full_release"
    assert sorted(p.name for p in release.iterdir()) == [f"Session{i}" for i in range(1, 6)]
    wavs = set(release.glob("Session*/sentences/wav/*/*.wav"))
    assert wavs == {u["wav"] for u in utts}  # no orphan wav, no missing wav
    assert len({u["uid"] for u in utts}) == len(utts)
    assert not list(root.parent.glob(".*partial*"))  # the temp folder was moved into place


def test_labels_and_speaker_quirks(tiny: tuple[Path, dict, list[dict]]) -> None:
    _, _, utts = tiny
    impro = Counter(u["label"] for u in utts if not u["scripted"])
    assert all(impro[k] >= 12 for k in FIVE), impro
    assert 60 <= len(utts) <= 85
    assert any(u["scripted"] for u in utts)
    others = set(impro) - set(FIVE)
    assert {"fru", "xxx"} <= others and len(others) >= 4
    speakers = {u["speaker"] for u in utts}
    assert speakers == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    # The speaker is the LAST token's letter, which often differs from the dialog's lead.
    assert any(u["dialog"][5] != u["speaker"][-1] for u in utts)
    assert any(re.search(r"impro\d\d[ab]$", u["dialog"]) for u in utts)
    assert any(re.search(r"script\d\d_\d[ab]$", u["dialog"]) for u in utts)
    for u in utts:  # raters agree with the label by majority; xxx means no majority
        top = Counter(u["votes"]).most_common(1)[0][1]
        if u["label"] == "xxx":
            assert top < 2, u
        elif u["label"] in NAMES:
            assert u["votes"].count(NAMES[u["label"]]) >= 2, u


def test_wavs_are_16k_pcm16_mono_and_match_times(tiny: tuple[Path, dict, list[dict]]) -> None:
    _, summary, utts = tiny
    for u in utts:
        info = sf.info(str(u["wav"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), u["uid"]
        assert abs(info.frames - (u["end"] - u["start"]) * 16000) <= 2, u["uid"]
        assert 1.2 <= info.frames / 16000 <= 6.0
        y, _ = sf.read(str(u["wav"]), dtype="int16")
        assert np.abs(y).max() > 1000 and np.abs(y).max() < 32767  # speech, no clipping
    impro = Counter(u["label"] for u in utts if not u["scripted"])
    assert summary["improvised"] == dict(impro)
    assert summary["utterances"] == len(utts)
    assert summary["seconds"] == pytest.approx(sum(u["end"] - u["start"] for u in utts), abs=0.1)


def test_noise_files_never_silent(tiny: tuple[Path, dict, list[dict]]) -> None:
    root, summary, _ = tiny
    rates = set()
    for entry in summary["noise"]:
        y, sr = sf.read(str(root / "noise" / entry["file"]), dtype="int16")
        assert y.ndim == 1 and 10.0 <= len(y) / sr <= 15.0
        rates.add(sr)
        windows = y[: len(y) // sr * sr].reshape(-1, sr)
        assert (np.abs(windows).max(axis=1) > 0).all(), f"{entry['file']} has a silent 1 s window"
        assert np.abs(y).max() < 32767
    assert 16000 in rates and rates - {16000}, rates  # some need resampling
    assert len(summary["noise"]) == len(list((root / "noise").glob("*.wav"))) >= 3


def test_same_seed_same_bytes_cli(tiny: tuple[Path, dict, list[dict]], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """One synthesis (the tiny corpus again, with two worker processes) into a folder that holds an
    older corpus: refused without --force, replaced whole with it, and byte-identical to the first.
    That another seed gives another corpus is test_plan_sizes' (the plan is where the seed acts)."""
    root, _, _ = tiny
    other = tmp_path / "again"
    (other / "noise").mkdir(parents=True)
    (other / "noise" / "stale.wav").write_bytes(b"an older corpus")
    (other / "SYNTH.json").write_text("{}")
    assert main(["synth", "--out", str(other), "--size", "tiny"]) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    # Two worker processes: the order of work must not change a byte.
    assert main(["synth", "--out", str(other), "--size", "tiny", "--workers", "2", "--force"]) == 0
    assert "AHSN" in capsys.readouterr().out
    assert tree_digest(other) == tree_digest(root)


def test_plan_sizes() -> None:
    """Cheap (no audio): demo and full have the documented sizes and imbalance."""
    for size, (lo, hi) in {"demo": (700, 900), "full": (8000, 9400)}.items():
        utts = plan_corpus(size, 0)
        impro = [u for u in utts if not u.scripted]
        blocks = Counter()
        for u in impro:
            blocks[u.label] += u.n_samples // 16000
        assert lo <= sum(blocks[k] for k in ("ang", "hap", "sad", "neu")) <= hi, (size, blocks)
        assert blocks["neu"] == max(blocks[k] for k in ("ang", "hap", "sad", "neu"))
        assert blocks["hap"] == min(blocks[k] for k in ("ang", "hap", "sad", "neu"))
        assert plan_corpus(size, 0) == utts and plan_corpus(size, 1) != utts
    assert 2800 <= sum(1 for u in plan_corpus("full") if not u.scripted and u.label in FIVE) <= 3100


def _features(y: np.ndarray) -> tuple[float, float]:
    """(median F0 in Hz over voiced frames, share of power above 2 kHz in dB)."""
    import librosa

    y = y.astype(np.float32) / 32768.0
    f0 = librosa.yin(y, fmin=60, fmax=500, sr=16000, frame_length=1024)
    rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0][: len(f0)]
    voiced = f0[rms > 0.3 * rms.max()]
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    return float(np.median(voiced)), float(10 * np.log10(spec[f > 2000].sum() / spec.sum()))


def test_emotion_is_carried_but_classes_overlap(tiny: tuple[Path, dict, list[dict]]) -> None:
    _, _, utts = tiny
    rows = [(u, *_features(sf.read(str(u["wav"]), dtype="int16")[0]))
            for u in utts if not u["scripted"] and u["label"] in FIVE]
    # F0 in semitones re each speaker's own median: a woman's sad voice is still higher
    # than a man's angry one, so emotion shows only relative to the speaker.
    med = {s: np.median([f0 for u, f0, _ in rows if u["speaker"] == s]) for s in {u["speaker"] for u, *_ in rows}}
    st = {k: np.array([12 * np.log2(f0 / med[u["speaker"]]) for u, f0, _ in rows if u["label"] == k]) for k in FIVE}
    hf = {k: np.array([h for u, _, h in rows if u["label"] == k]) for k in FIVE}
    for high in ("ang", "hap", "exc"):
        assert st[high].mean() > st["neu"].mean() > st["sad"].mean(), {k: v.mean() for k, v in st.items()}
    assert hf["ang"].mean() > hf["neu"].mean() > hf["sad"].mean(), {k: v.mean() for k, v in hf.items()}
    for a, b in (("ang", "neu"), ("hap", "exc"), ("neu", "sad"), ("ang", "exc")):
        for feat in (st, hf):  # no single cue separates two classes perfectly
            assert feat[a].min() < feat[b].max() and feat[b].min() < feat[a].max(), (a, b)


def test_blocks_learnable_not_trivial(tiny: tuple[Path, dict, list[dict]]) -> None:
    """A linear model on log-mel statistics of 1 s blocks beats chance but is far from perfect."""
    import librosa
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = [], []
    for u in tiny[2]:
        if u["scripted"] or u["label"] not in ("ang", "hap", "sad", "neu"):
            continue
        audio, _ = sf.read(str(u["wav"]), dtype="float32")
        for b in range(len(audio) // 16000):
            block = audio[b * 16000:(b + 1) * 16000]
            mel = librosa.feature.melspectrogram(y=block / np.abs(block).max(), sr=16000, n_fft=512,
                                                 hop_length=62, n_mels=32)
            db = librosa.power_to_db(mel, ref=np.max, top_db=80)
            X.append(np.concatenate([db.mean(1), db.std(1)]))
            y.append(u["label"])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=3000))
    acc = cross_val_score(clf, np.array(X), np.array(y), cv=5).mean()
    assert 0.45 < acc < 0.95, acc
