"""Corpus readers: an IEMOCAP copy (real or synthetic) or a CSV list → utterances.

Every input line either becomes an :class:`Utterance` or a :class:`Reject` with a reason;
nothing is dropped silently, and nothing here raises for one bad line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
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
    return utts, rejects


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
    reader = csv.DictReader(io.StringIO(read_utf8(csv_path), newline=""))
    missing = {"path", "label", "speaker"} - set(reader.fieldnames or [])
    if missing:
        raise UsageError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} "
                         "(expected header path,label,speaker[,session])")
    rows = list(reader)
    utts: list[Utterance] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    first_row: dict[Path, str] = {}  # resolved audio path → the row that listed it first
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        rel = (row.get("path") or "").strip()
        path = (csv_path.parent / rel).resolve()
        label = normalise_label(row.get("label") or "")
        speaker = (row.get("speaker") or "").strip()
        item = f"{csv_path.name}:{n}"
        if not rel or not speaker:
            rejects.append(Reject(item, "empty path or speaker", "corpus", rel or None))
        elif label is None:
            rejects.append(Reject(item, f"unknown label '{row.get('label')}'", "corpus", str(path)))
        elif not path.is_file():
            rejects.append(Reject(item, "audio file missing", "corpus", str(path)))
        elif path in first_row:  # kept once: twice would put one block in train and test alike
            rejects.append(Reject(item, f"duplicate of {first_row[path]} (same audio file)", "corpus", str(path)))
        else:
            first_row[path] = item
            uid = unique_id(Path(rel), seen)
            session = (row.get("session") or "").strip() or speaker
            utts.append(Utterance(uid, str(path), rel, label, speaker, session))
    return utts, rejects


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
