"""Write the synthetic corpus: IEMOCAP's on-disk layout and label format, plus noise WAVs.

    serwild synth --out corpora/synth --size demo [--seed 0] [--force]

Writes ``OUT/IEMOCAP_full_release/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt`` and
``OUT/IEMOCAP_full_release/Session{n}/sentences/wav/<dialog>/<utterance>.wav`` (16 kHz,
16-bit mono), ``OUT/noise/*.wav`` (classroom babble, ventilation, chairs and doors, a mix;
some at 22.05/44.1 kHz) and ``OUT/SYNTH.json`` (the summary). The same seed gives the same
bytes. Sizes: ``tiny`` (tests, ~75 utterances), ``demo`` (~800 one-second AHSN blocks),
``full`` (IEMOCAP-sized: ~2,950 improvised utterances, ~8.7k AHSN blocks).

The audio stands in for IEMOCAP, which is licensed: speech-like signals whose emotion is
carried by prosody and voice quality (see ``voice.py``), with the real corpus's quirks
(scripted dialogs, lettered dialog names, labels outside the 4-class sets, utterances whose
speaker differs from the dialog's lead) so the reader a real user runs is exercised.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serwild.errors import UsageError
from serwild.progress import progress as progress_bar
from serwild.synth import noise as noisegen
from serwild.synth import voice
from serwild.synth.voice import stream

SR = 16000
RELEASE = "IEMOCAP_full_release"
LABELS = ("ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx")
# Improvised scenarios; each is recorded twice per session, once led by each actor.
IMPRO = ("impro01", "impro02", "impro03", "impro04", "impro05a", "impro05b", "impro06", "impro07", "impro08")
SCRIPT = ("script01_1", "script01_2", "script01_3", "script02_1", "script02_2", "script03_1", "script03_2")


@dataclass(frozen=True)
class SizeSpec:
    improvised: dict[str, int]  # utterances per label in improvised dialogs
    scripted: int  # utterances in scripted dialogs (labels drawn from SCRIPTED_MIX)
    dur_median: float  # utterance duration: log-normal, clipped to [1.2, 6] s
    dur_sigma: float
    dialog_len: int  # at most this many utterances per dialog
    noise_seconds: float


SIZES: dict[str, SizeSpec] = {
    # At least 12 improvised utterances per 5-class label: 5 stratified folds work in tests.
    "tiny": SizeSpec({"ang": 12, "hap": 12, "exc": 12, "sad": 12, "neu": 13, "fru": 2, "sur": 1,
                      "fea": 1, "dis": 1, "oth": 1, "xxx": 2}, 6, 2.9, 0.3, 9, 12.0),
    # Imbalanced like IEMOCAP's improvised part (neu most, hap least): ~290 AHSN utterances.
    "demo": SizeSpec({"ang": 52, "hap": 44, "exc": 96, "sad": 84, "neu": 142, "fru": 40, "sur": 6,
                      "fea": 4, "dis": 2, "oth": 4, "xxx": 30}, 60, 2.9, 0.3, 30, 60.0),
    # IEMOCAP's improvised label counts; longer utterances to match its block counts.
    "full": SizeSpec({"ang": 289, "hap": 284, "exc": 663, "sad": 608, "neu": 1099, "fru": 500,
                      "sur": 40, "fea": 20, "dis": 2, "oth": 10, "xxx": 300}, 800, 4.2, 0.22, 60, 300.0),
}
SCRIPTED_MIX = {"neu": 0.25, "fru": 0.2, "ang": 0.1, "sad": 0.1, "hap": 0.05, "exc": 0.1, "sur": 0.03,
                "fea": 0.02, "oth": 0.01, "xxx": 0.14}
CATEGORY = {"ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "neu": "Neutral",
            "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
CONFUSED = {"ang": ("fru", "dis"), "hap": ("exc", "neu"), "exc": ("hap", "sur"), "sad": ("neu", "fru"),
            "neu": ("fru", "sad", "exc"), "fru": ("ang", "neu"), "sur": ("exc", "hap"),
            "fea": ("sur", "sad"), "dis": ("ang", "fru"), "oth": ("neu", "fru")}
# Mean (valence, activation, dominance) per label on IEMOCAP's 1-5 scales.
VAD = {"ang": (1.8, 3.9, 3.9), "hap": (4.0, 3.1, 3.0), "exc": (3.9, 3.7, 3.4), "sad": (1.9, 2.2, 2.3),
       "neu": (3.0, 2.5, 2.8), "fru": (2.0, 3.2, 3.3), "sur": (3.3, 3.6, 2.9), "fea": (2.0, 3.4, 2.2),
       "dis": (1.8, 3.0, 3.3), "oth": (3.0, 3.0, 3.0), "xxx": (2.8, 3.0, 3.0)}
NOTES = ("annoyed", "tired", "curious", "mildly", "sarcastic", "playful", "worried", "resigned")
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


@dataclass(frozen=True)
class Utterance:
    uid: str  # <dialog>_<F|M><NNN>
    dialog: str
    session: int
    gender: str  # the speaker's: the letter of the id's LAST token, not the dialog's
    label: str
    scripted: bool
    start: float  # seconds into the dialog, a multiple of 0.1 ms
    n_samples: int

    @property
    def speaker(self) -> str:
        return f"Ses{self.session:02d}{self.gender}"

    @property
    def seconds(self) -> float:
        return self.n_samples / SR

    @property
    def wav(self) -> str:
        return f"{RELEASE}/Session{self.session}/sentences/wav/{self.dialog}/{self.uid}.wav"


# ----------------------------------------------------------------------------- the plan


def plan_corpus(size: str, seed: int = 0) -> list[Utterance]:
    """Every utterance: id, dialog, speaker, label, times. Cheap (no audio), deterministic."""
    spec = _size(size)
    rng = stream(seed, "plan", size)
    slots: dict[tuple[int, bool], list[tuple[str, str]]] = {}  # (session, scripted) → (gender, label)
    for scripted, labels in ((False, _expand(spec.improvised)), (True, _scripted_labels(spec, rng))):
        offset = int(rng.integers(10))
        for i, label in enumerate(labels):
            # Round-robin over the 10 speakers: every label is spread over sessions and genders.
            spk = (i + offset + 3 * LABELS.index(label)) % 10
            slots.setdefault((spk // 2 + 1, scripted), []).append(("FM"[spk % 2], label))
    utts: list[Utterance] = []
    for (session, scripted), items in sorted(slots.items()):
        order = rng.permutation(len(items))
        n_dialogs = math.ceil(len(items) / spec.dialog_len)
        for d in range(n_dialogs):
            name = _dialog_name(session, d, scripted)
            members = [items[j] for j in order[d::n_dialogs]]
            utts += _dialog(name, session, scripted, members, spec, rng)
    return utts


def _size(size: str) -> SizeSpec:
    if size not in SIZES:
        raise UsageError(f"unknown corpus size {size!r} (choose {' | '.join(SIZES)})")
    return SIZES[size]


def _expand(counts: dict[str, int]) -> list[str]:
    return [label for label in LABELS for _ in range(counts.get(label, 0))]


def _scripted_labels(spec: SizeSpec, rng: np.random.Generator) -> list[str]:
    names = sorted(SCRIPTED_MIX)
    p = np.array([SCRIPTED_MIX[n] for n in names])
    return sorted((names[i] for i in rng.choice(len(names), size=spec.scripted, p=p / p.sum())),
                  key=LABELS.index)


def _dialog_name(session: int, d: int, scripted: bool) -> str:
    """The d-th dialog of a session: scenarios in a per-session rotation, each led by F then M.

    The rotation puts lettered names (``impro05a``, ``script01_1b``) into small corpora too.
    """
    names = list(SCRIPT if scripted else IMPRO)
    rot = 2 * (session - 1) % len(names)
    if scripted and session == 5:
        names[0], rot = "script01_1b", 0
    names = names[rot:] + names[:rot]
    k = d // 2
    base = names[k] if k < len(names) else (f"script{k + 1:02d}_1" if scripted else f"impro{k + 1:02d}")
    return f"Ses{session:02d}{'FM'[d % 2]}_{base}"


def _dialog(name: str, session: int, scripted: bool, members: list[tuple[str, str]], spec: SizeSpec,
            rng: np.random.Generator) -> list[Utterance]:
    """Turns in time order, numbered per speaker (F000, M000, F001 …); times increase."""
    t = round(float(rng.uniform(1.0, 8.0)), 4)
    numbers: Counter[str] = Counter()
    out = []
    for gender, label in members:
        seconds = float(np.clip(rng.lognormal(np.log(spec.dur_median), spec.dur_sigma), 1.2, 6.0))
        n = int(round(seconds * SR))
        uid = f"{name}_{gender}{numbers[gender]:03d}"
        numbers[gender] += 1
        out.append(Utterance(uid, name, session, gender, label, scripted, t, n))
        t = round(t + n / SR + float(rng.uniform(0.3, 4.0)), 4)
    return out


# ----------------------------------------------------------------------------- label files


def emo_evaluation(utts: list[Utterance], seed: int) -> str:
    """One dialog's EmoEvaluation text, in the real corpus's format."""
    parts = [HEADER]
    for u in sorted(utts, key=lambda u: u.start):
        rng = stream(seed, "raters", u.uid)
        cat, dims, vad = _raters(u, rng)
        end = u.start + u.seconds
        parts.append(f"[{u.start:.4f} - {end:.4f}]\t{u.uid}\t{u.label}\t"
                     f"[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]\n")
        parts.extend(line + "\n" for line in cat + dims)
        parts.append("\n")
    return "".join(parts)


def _raters(u: Utterance, rng: np.random.Generator) -> tuple[list[str], list[str], tuple[float, ...]]:
    """Categorical lines (a majority for the label, or none for xxx) and dimensional lines."""
    who = sorted(rng.choice(["C-E1", "C-E2", "C-E3", "C-E4"], size=3, replace=False).tolist())
    if u.label == "xxx":  # no majority: three different opinions
        votes = rng.choice(sorted(CATEGORY), size=3, replace=False).tolist()
    else:
        votes = [u.label] * 3
        if rng.random() < 0.5:
            votes[int(rng.integers(3))] = str(rng.choice(CONFUSED[u.label]))
    if rng.random() < 0.5:  # the actor's self-assessment (C-F1 / C-M1)
        who.append(f"C-{u.gender}1")
        votes.append(votes[0] if rng.random() < 0.7 else str(rng.choice(sorted(CATEGORY))))
    cat = []
    for w, v in zip(who, votes):
        names = [CATEGORY[v]]
        if rng.random() < 0.15:
            names.append(CATEGORY[str(rng.choice(CONFUSED[v]))])
        cat.append(f"{w}:\t{'; '.join(names)};\t({_note(rng)})")
    mean = np.array(VAD[u.label])
    raters = sorted(rng.choice(["A-E1", "A-E2", "A-E3", "A-E4"], size=int(rng.integers(2, 4)),
                               replace=False).tolist())
    scores = [np.clip(np.rint(mean + rng.normal(0, 0.7, 3)), 1, 5).astype(int) for _ in raters]
    vad = tuple(float(x) for x in np.mean(scores, axis=0))
    if rng.random() < 0.5:
        raters.append(f"A-{u.gender}1")
        scores.append(np.clip(np.rint(mean + rng.normal(0, 0.7, 3)), 1, 5).astype(int))
    dims = [f"{w}:\tval {s[0]}; act {s[1]}; dom  {s[2]};\t({_note(rng)})" for w, s in zip(raters, scores)]
    return cat, dims, vad


def _note(rng: np.random.Generator) -> str:
    return str(rng.choice(NOTES)) if rng.random() < 0.15 else ""


# ----------------------------------------------------------------------------- writing


def write_synthetic_corpus(out: Path, size: str = "demo", seed: int = 0, *, overwrite: bool = False,
                           progress: bool | None = None, workers: int | None = None) -> dict:
    """Write the corpus and noise under ``out``; returns the summary (also ``out/SYNTH.json``).

    ``progress`` (default: not for tiny) shows tqdm bars; ``workers`` (default: all cores for
    ``full``, else 1) renders utterances in parallel processes, with identical bytes.

    Everything is written into a sibling temp folder first and moved into place at the
    end, so an interrupted run never leaves a half corpus that a later build would use.
    """

    spec = _size(size)
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    out = Path(out)
    targets = [out / RELEASE, out / "noise", out / "SYNTH.json"]
    if not overwrite and any(p.exists() for p in targets):
        raise UsageError(f"{out} already holds a synthetic corpus; pass --force to replace it")
    if progress is None:
        progress = size != "tiny"
    if workers is None:
        workers = (os.cpu_count() or 1) if size == "full" else 1
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    tmp = out.resolve().parent / f".{out.resolve().name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous run's leftovers: ours, by name
    utts = plan_corpus(size, seed)
    _write_labels(tmp, utts, seed)
    _write_audio(tmp, utts, seed, progress, workers)
    noise = noisegen.write_noise(tmp / "noise", spec.noise_seconds, seed, progress=progress)
    summary = _summary(utts, noise, out, size, seed)
    # The file leaves out the root, so a corpus moved or written elsewhere is byte-identical.
    on_disk = {k: v for k, v in summary.items() if k != "root"}
    (tmp / "SYNTH.json").write_text(json.dumps(on_disk, indent=2, sort_keys=True) + "\n")
    _move_into_place(tmp, out, targets)
    return summary


def _write_labels(root: Path, utts: list[Utterance], seed: int) -> None:
    by_dialog: dict[str, list[Utterance]] = {}
    for u in utts:
        by_dialog.setdefault(u.dialog, []).append(u)
    for dialog, members in by_dialog.items():
        path = root / RELEASE / f"Session{members[0].session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(emo_evaluation(members, seed))


def _write_audio(root: Path, utts: list[Utterance], seed: int, progress: bool, workers: int) -> None:
    """Render every utterance; with ``workers`` > 1 in worker processes (the bytes are the same:
    each utterance's numbers come from its own seed, not from the order of work)."""

    chunks = [utts[i:i + 16] for i in range(0, len(utts), 16)]
    bar = progress_bar(len(utts), "utterances", unit="utt", command="synth", enabled=progress)
    with bar:
        if workers <= 1:
            for chunk in chunks:
                bar.update(_render(root, chunk, seed))
            return
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        # Pool's exit terminates the workers, so Ctrl-C or an error stops at once (no queue drain).
        with ctx.Pool(workers) as pool:
            for done in pool.imap_unordered(_render_chunk, [(root, c, seed) for c in chunks]):
                bar.update(done)


def _render_chunk(job: tuple[Path, list[Utterance], int]) -> int:
    return _render(*job)


def _render(root: Path, utts: list[Utterance], seed: int) -> int:

    for u in utts:
        rng = stream(seed, "audio", u.uid)
        spk = voice.random_voice(u.gender, stream(seed, "voice", u.speaker))
        y = voice.synthesize(u.n_samples, spk, voice.utterance_style(u.label, rng), rng)
        path = root / u.wav
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, to_pcm16(y), SR, subtype="PCM_16")
    return len(utts)


def to_pcm16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(y * 32767.0), -32768, 32767).astype(np.int16)


def _summary(utts: list[Utterance], noise: list[dict], out: Path, size: str, seed: int) -> dict:
    impro = [u for u in utts if not u.scripted]
    blocks = Counter()
    for u in impro:
        blocks[u.label] += u.n_samples // SR  # 1 s blocks, tail dropped (the builder's default)
    return {
        "generator": "serwild synth/1",
        "size": size,
        "seed": seed,
        "root": str(out),
        "utterances": len(utts),
        "improvised": dict(sorted(Counter(u.label for u in impro).items())),
        "scripted": dict(sorted(Counter(u.label for u in utts if u.scripted).items())),
        "speakers": len({u.speaker for u in utts}),
        "dialogs": len({u.dialog for u in utts}),
        "seconds": round(sum(u.seconds for u in utts), 2),
        "improvised_blocks": dict(sorted(blocks.items())),
        "blocks": {"ahsn": sum(blocks[k] for k in ("ang", "hap", "sad", "neu")),
                   "aesn": sum(blocks[k] for k in ("ang", "exc", "sad", "neu"))},
        "noise": noise,
    }


def _move_into_place(tmp: Path, out: Path, targets: list[Path]) -> None:
    if not out.exists():
        tmp.rename(out)  # atomic: the corpus appears whole or not at all
        return
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        (tmp / target.name).rename(target)
    tmp.rmdir()


def format_summary(s: dict) -> str:
    impro = ", ".join(f"{k} {v}" for k, v in s["improvised"].items())
    noise = ", ".join(f"{n['file']} ({n['seconds']:.0f} s @ {n['sample_rate']} Hz)" for n in s["noise"])
    return (f"wrote {s['root']}: {s['utterances']} utterances, {s['seconds'] / 60:.1f} min of audio, "
            f"{s['speakers']} speakers, {s['dialogs']} dialogs\n"
            f"  improvised: {impro}\n"
            f"  scripted: {sum(s['scripted'].values())} (skipped by the reader by default)\n"
            f"  1 s blocks: AHSN {s['blocks']['ahsn']}, AESN {s['blocks']['aesn']}\n"
            f"  noise: {noise}")
