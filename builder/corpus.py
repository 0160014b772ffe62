"""Corpus readers: an IEMOCAP copy (real or synthetic) or a CSV list → utterances.

Every input line either becomes an :class:`Utterance` or a :class:`Reject` with a reason;
nothing is dropped silently, and nothing here raises for one bad line (only for a file that
is not a list at all: not UTF-8, no header, a field the csv module cannot take). A recording
listed under two paths (a hard link, a copy) is used once: the later listings are rejects.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from serwild.builder.config import CorpusConfig
from serwild.errors import UsageError

# The paper's two 4-class views of IEMOCAP; the order is the class index.
DATASETS: dict[str, tuple[str, ...]] = {
    "ahsn": ("ang", "hap", "sad", "neu"),
    "aesn": ("ang", "exc", "sad", "neu"),
}
# Every categorical code IEMOCAP uses (xxx = no rater agreement).
IEMOCAP_CODES = frozenset(["ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx"])
# Spelled-out labels seen in other corpora's metadata (RAVDESS, CREMA-D, own recordings).
LABEL_ALIASES = {
    "anger": "ang", "angry": "ang", "happy": "hap", "happiness": "hap", "joy": "hap",
    "excited": "exc", "excitement": "exc", "sad": "sad", "sadness": "sad",
    "neutral": "neu", "frustrated": "fru", "frustration": "fru", "surprise": "sur",
    "surprised": "sur", "fear": "fea", "fearful": "fea", "disgust": "dis", "other": "oth",
}
SUMMARY_LINE = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\s+(\S+)\s+(\S+)\s+\[")
SESSION_ID = re.compile(r"^(Ses\d\d)[FM]_")
# A sample key is "<id>_b<block>_<condition>": WebDataset cuts a key at its first '.', and
# '/' or spaces would be tar paths or worse, so ids keep to these characters.
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Utterance:
    id: str  # safe as a WebDataset key prefix: letters, digits, '_' and '-' only
    path: str  # absolute path of the audio file
    source: str  # the path relative to the corpus root, for metadata
    label: str
    speaker: str
    session: str


@dataclass(frozen=True)
class Reject:
    item: str  # utterance id, noise file or CSV row
    reason: str
    stage: str  # corpus | audio | noise | render
    path: str | None = None
    block: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_corpus(cfg: CorpusConfig, datasets: list[str]) -> tuple[list[Utterance], list[Reject]]:
    """Utterances whose label one of ``datasets`` uses, and rejects for all the rest."""
    wanted = {code for name in datasets for code in DATASETS[name]}
    if cfg.kind == "csv":
        utts, rejects = read_csv_list(Path(cfg.root))
    else:
        utts, rejects = read_iemocap(Path(cfg.root), cfg.improvised_only)
    kept = []
    for u in utts:
        if u.label in wanted:
            kept.append(u)
        else:
            views = "; ".join(f"{d}: {' '.join(DATASETS[d])}" for d in datasets)
            rejects.append(Reject(u.id, f"label '{u.label}' not in the selected datasets ({views})",
                                  "corpus", u.path))
    return kept, rejects


# ----------------------------------------------------------------------------- IEMOCAP


def iemocap_release_dir(root: Path) -> Path:
    """``root`` itself or ``root/IEMOCAP_full_release``, whichever holds Session* folders."""
    for cand in (root / "IEMOCAP_full_release", root):
        if any(cand.glob("Session[0-9]*/dialog/EmoEvaluation")):
            return cand
    if not root.exists():
        raise UsageError(f"corpus.root {root} does not exist")
    raise UsageError(f"corpus.root {root}: no IEMOCAP_full_release/Session*/dialog/EmoEvaluation folders")


def read_iemocap(root: Path, improvised_only: bool = True) -> tuple[list[Utterance], list[Reject]]:
    release = iemocap_release_dir(root)
    utts: list[Utterance] = []
    rejects: list[Reject] = []
    first_seen: dict[str, str] = {}  # utterance id → the EmoEvaluation file that listed it first
    # Only the top-level .txt files: EmoEvaluation/ also holds Attribute/, Categorical/ …
    # subfolders and, in many copies, macOS "._" resource forks.
    for txt in sorted(release.glob("Session*/dialog/EmoEvaluation/*.txt")):
        if txt.name.startswith("._"):
            continue
        dialog = txt.stem
        session_dir = txt.parents[2]
        for utt_id, label in parse_emo_evaluation(txt):
            where = str(txt.relative_to(release))
            if utt_id in first_seen:  # the first listing is used; a second would repeat its samples' keys
                rejects.append(Reject(utt_id, f"duplicate utterance id (first listed in {first_seen[utt_id]})",
                                      "corpus", str(txt)))
                continue
            first_seen[utt_id] = where
            u, r = _iemocap_utterance(release, session_dir, dialog, utt_id, label, improvised_only)
            if u is not None:
                utts.append(u)
            if r is not None:
                rejects.append(r)
    utts, same = drop_same_audio([(u.id, u) for u in utts])
    return utts, rejects + same


def parse_emo_evaluation(txt: Path) -> list[tuple[str, str]]:
    """``(utterance id, label code)`` for each summary line; rater lines are ignored."""
    out = []
    for line in txt.read_text(errors="replace").splitlines():
        m = SUMMARY_LINE.match(line)
        if m:
            out.append((m.group(3), m.group(4)))
    return out


def iemocap_speaker(utt_id: str) -> tuple[str, str] | None:
    """``Ses01F_impro01_M003`` → ("Ses01M", "Ses01"): the speaker's gender is the last
    token's letter, not the dialog's (the dialog letter says who wore the markers)."""
    m = SESSION_ID.match(utt_id)
    last = utt_id.rsplit("_", 1)[-1]
    if not m or not last or last[0] not in "FM":
        return None
    return m.group(1) + last[0], m.group(1)


def _iemocap_utterance(release: Path, session_dir: Path, dialog: str, utt_id: str, label: str,
                       improvised_only: bool) -> tuple[Utterance | None, Reject | None]:
    wav = session_dir / "sentences" / "wav" / dialog / f"{utt_id}.wav"
    if not SAFE_ID.fullmatch(utt_id):
        return None, Reject(utt_id, "utterance id has characters outside [A-Za-z0-9_-] (it would not be a "
                            "usable WebDataset key)", "corpus", str(wav))
    if improvised_only and "impro" not in dialog:
        return None, Reject(utt_id, "scripted dialog (corpus.improvised_only: true)", "corpus", str(wav))
    if label not in IEMOCAP_CODES:
        return None, Reject(utt_id, f"unknown label code '{label}'", "corpus", str(wav))
    spk = iemocap_speaker(utt_id)
    if spk is None:
        return None, Reject(utt_id, "cannot read speaker/session from the utterance id", "corpus", str(wav))
    if not wav.is_file():
        return None, Reject(utt_id, "wav missing", "corpus", str(wav))
    return Utterance(utt_id, str(wav), str(wav.relative_to(release)), label, *spk), None


# ----------------------------------------------------------------------------- CSV


def read_csv_list(csv_path: Path) -> tuple[list[Utterance], list[Reject]]:
    """``path,label,speaker[,session]`` (header required); paths relative to the CSV."""
    if not csv_path.is_file():
        raise UsageError(f"corpus.root {csv_path}: CSV list not found")
    text = read_utf8(csv_path)
    source = io.StringIO(text, newline="")
    reader = csv.DictReader(source)
    with _csv_errors(csv_path, text, source):
        missing = {"path", "label", "speaker"} - set(reader.fieldnames or [])
        if missing:
            raise UsageError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} "
                             "(expected header path,label,speaker[,session])")
        rows = list(reader)
    listed: list[tuple[str, Utterance]] = []  # (row, utterance)
    rejects: list[Reject] = []
    seen: set[str] = set()
    first_row: dict[Path, str] = {}  # resolved audio path → the row that listed it first
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        rel = (row.get("path") or "").strip()
        path = (csv_path.parent / rel.replace("\0", "")).resolve()
        label = normalise_label(row.get("label") or "")
        speaker = (row.get("speaker") or "").strip()
        item = f"{csv_path.name}:{n}"
        if not rel or not speaker:
            rejects.append(Reject(item, "empty path or speaker", "corpus", rel or None))
        elif label is None:
            rejects.append(Reject(item, f"unknown label '{row.get('label')}'", "corpus", str(path)))
        elif (problem := _audio_file_problem(rel, path)) is not None:
            rejects.append(Reject(item, problem, "corpus", str(path)))
        elif path in first_row:  # kept once: twice would put one block in train and test alike
            rejects.append(Reject(item, f"duplicate of {first_row[path]} (same audio file)", "corpus", str(path)))
        else:
            first_row[path] = item
            uid = unique_id(Path(rel), seen)
            session = (row.get("session") or "").strip() or speaker
            listed.append((item, Utterance(uid, str(path), rel, label, speaker, session)))
    utts, same = drop_same_audio(listed)
    return utts, rejects + same


# ----------------------------------------------------------------------------- one recording, two paths


def drop_same_audio(listed: list[tuple[str, Utterance]]) -> tuple[list[Utterance], list[Reject]]:
    """The utterances whose file's bytes no earlier one has, and a reject for each later copy.

    A hard link or a copy of a recording under another path is the same recording: used twice,
    its blocks could land in train and test alike. Sizes are compared first, so only files of
    equal size are read and hashed. ``listed`` pairs each utterance with the item a reject names
    (the utterance id, or the CSV row)."""
    by_size: dict[int, list[int]] = {}
    for i, (_, u) in enumerate(listed):
        try:
            by_size.setdefault(os.stat(u.path).st_size, []).append(i)
        except OSError:
            continue  # unreadable here: the scan rejects it with its own reason
    first_of: dict[int, Utterance] = {}  # index of a later copy → the first utterance with its bytes
    for group in by_size.values():
        if len(group) < 2:
            continue
        owner: dict[str, Utterance] = {}
        for i in group:  # in listing order, so the first listed is the one kept
            digest = file_sha256(listed[i][1].path)
            if digest is not None and owner.setdefault(digest, listed[i][1]) is not listed[i][1]:
                first_of[i] = owner[digest]
    kept = [u for i, (_, u) in enumerate(listed) if i not in first_of]
    rejects = [Reject(item, f"same audio as '{first_of[i].source}'", "corpus", u.path)
               for i, (item, u) in enumerate(listed) if i in first_of]
    return kept, rejects


def file_sha256(path: str) -> str | None:
    """sha256 of a file's bytes, read in 1 MiB pieces; None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _audio_file_problem(rel: str, path: Path) -> str | None:
    """Why a listed path is not a usable file (None: it is one). A path no file system takes
    (a NUL byte, longer than the system allows) is a reason like a missing file, not a crash."""
    if "\0" in rel:
        return "the path has a NUL byte"
    try:
        return None if path.is_file() else "audio file missing"
    except OSError as e:  # e.g. ENAMETOOLONG, EACCES on a folder on the way
        return f"audio file cannot be looked up ({e.strerror or e})"


@contextlib.contextmanager
def _csv_errors(csv_path: Path, text: str, source: io.StringIO) -> Iterator[None]:
    """The csv module's errors as one line naming the file and line: a field past its limit
    (no path, label or speaker is that long: it is not a list of recordings, or a quote is
    left open), a NUL byte…"""
    try:
        yield
    except csv.Error as e:
        # The line the reader had reached is the last one taken from ``source`` (the reader's own
        # line_num is one short when it fails inside a long line).
        line = text.count("\n", 0, max(source.tell() - 1, 0)) + 1
        if "field larger than field limit" in str(e):
            why = (f"a field longer than {csv.field_size_limit()} characters (an unclosed quote, or not a "
                   "path,label,speaker list)")
        else:
            why = f"not readable as CSV ({e})"
        raise UsageError(f"{csv_path} line {line}: {why}") from None


def read_utf8(path: Path) -> str:
    """A text file as UTF-8 (a leading byte-order mark, as Excel writes, is dropped); any
    other encoding is one line naming the file and the first byte that is not UTF-8."""
    raw = path.read_bytes()
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = raw[:at].count(b"\n") + 1
        raise UsageError(f"{path}: not UTF-8 text (byte {at}, line {line}: {raw[at:at + 1]!r}); "
                         "save the list as UTF-8") from None


def normalise_label(raw: str) -> str | None:
    s = raw.strip().lower()
    if s in IEMOCAP_CODES:
        return s
    return LABEL_ALIASES.get(s)


def unique_id(rel: Path, seen: set[str]) -> str:
    """A key-safe id from a file name: WebDataset cuts keys at the first '.', so dots and
    other odd characters become '-', and a clash gets a short hash of the full path."""
    base = re.sub(r"[^A-Za-z0-9_-]", "-", rel.with_suffix("").name) or "utt"
    uid, n = base, 0
    while uid in seen:  # the same name in another folder (or a name that looks like a suffixed one)
        uid = f"{base}-{hashlib.sha256((str(rel) if n == 0 else f'{rel}#{n}').encode()).hexdigest()[:8]}"
        n += 1
    seen.add(uid)
    return uid
