"""A hand-made IEMOCAP-layout tree with the real corpus's quirks, and a config for it.

Independent of the synthetic corpus generator on purpose: these tests pin the reader to
the real on-disk format, not to whatever our generator writes.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.config import Config, load_config

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
LABEL_F0 = {"ang": 220.0, "hap": 300.0, "exc": 330.0, "sad": 120.0, "neu": 170.0}


def tone(seconds: float, f0: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * y / np.max(np.abs(y)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_dialog(release: Path, session: int, dialog: str, utts: list[tuple[str, str, float]],
                 write_wav: bool = True, sr: int = 16000) -> None:
    """utts: (utterance id, label, seconds); each gets a summary line + rater lines."""
    sess = release / f"Session{session}"
    emo = sess / "dialog" / "EmoEvaluation"
    emo.mkdir(parents=True, exist_ok=True)
    lines, t = [HEADER], 1.0
    for uid, label, secs in utts:
        lines.append(f"[{t:.4f} - {t + secs:.4f}]\t{uid}\t{label}\t[2.5000, 2.5000, 2.5000]\n")
        lines.append("C-E2:\tNeutral;\t()\nC-E3:\tAnger;\t(annoyed)\nA-E3:\tval 3; act 2; dom  2;\t()\n\n")
        t += secs + 0.7
        if write_wav:
            wav = sess / "sentences" / "wav" / dialog / f"{uid}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            # seeded by the id: every recording distinct (the builder rejects repeated audio)
            sf.write(wav, tone(secs, LABEL_F0.get(label, 200.0), sr, seed=zlib.crc32(uid.encode())), sr,
                     subtype="PCM_16")
    (emo / f"{dialog}.txt").write_text("".join(lines))


def make_tree(root: Path, per_class: int = 4) -> Path:
    """5 sessions of improvised dialogs (AHSN+AESN labels), plus quirks."""
    release = root / "IEMOCAP_full_release"
    labels = ["ang", "hap", "exc", "sad", "neu"]
    for s in range(1, 6):
        utts = []
        for i in range(per_class * len(labels)):
            gender = "F" if i % 2 == 0 else "M"
            utts.append((f"Ses0{s}F_impro01_{gender}{i:03d}", labels[i % len(labels)], 2.3 + 0.4 * (i % 3)))
        write_dialog(release, s, f"Ses0{s}F_impro01", utts)
    # Quirks: a lettered improvised dialog, scripted dialogs, other labels, a missing wav.
    write_dialog(release, 3, "Ses03M_impro05a", [("Ses03M_impro05a_F000", "sad", 2.0),
                                                 ("Ses03M_impro05a_M001", "fru", 2.0),
                                                 ("Ses03M_impro05a_M002", "xxx", 2.0)])
    write_dialog(release, 5, "Ses05M_script01_1b", [("Ses05M_script01_1b_F000", "ang", 2.0)])
    write_dialog(release, 1, "Ses01F_impro02", [("Ses01F_impro02_M000", "neu", 2.0)], write_wav=False)
    (release / "Session1" / "dialog" / "EmoEvaluation" / "Categorical").mkdir()
    (release / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05junk")
    return root


def make_noise(noise_dir: Path, seconds: float = 8.0) -> Path:
    noise_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    sf.write(noise_dir / "hum.wav", (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    n = int(seconds * 22050)
    babble = 0.2 * np.sin(2 * np.pi * 180 * np.arange(n) / 22050) + 0.05 * rng.standard_normal(n)
    sf.write(noise_dir / "babble.wav", babble.astype(np.float32), 22050, subtype="PCM_24")
    return noise_dir


@pytest.fixture
def corpus_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "corpus")


def tree_config(tmp_path: Path, **over: object) -> Config:
    make_tree(tmp_path / "corpus")
    make_noise(tmp_path / "noise")
    overrides = ["corpus.kind=iemocap", f"corpus.root={tmp_path / 'corpus'}", f"noise.dir={tmp_path / 'noise'}",
                 f"out={tmp_path / 'shards'}", "shard.max_samples=40", "ray.num_cpus=2"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, overrides)
