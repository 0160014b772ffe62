"""Corpus readers: an IEMOCAP copy (real or synthetic), a CSV list or an audiofolder → utterances (docs/corpora.md).

Every input line either becomes an :class:`Utterance` or a :class:`Reject` with a reason; nothing here raises for
one bad line (only for a file that is not a list at all). A recording listed under two paths (a hard link, a copy)
is used once: the later listings are rejects.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import hashlib
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from serwild.builder.config import CorpusConfig
from serwild.builder.labels import LABEL_ALIASES, PRESETS, View, canonical_label, resolve_views
from serwild.errors import UsageError
from serwild.text import MAX_LABEL_CHARS, decode_utf8

__all__ = ["DATASETS", "LABEL_ALIASES", "Reject", "Utterance", "read_corpus"]

# The paper's two 4-class views of IEMOCAP (built-in presets; any other view is config, see labels.py).
DATASETS: dict[str, tuple[str, ...]] = dict(PRESETS)
# Every categorical code IEMOCAP uses (xxx = no rater agreement).
IEMOCAP_CODES = frozenset(["ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx"])
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
    # A segment of a longer recording, in seconds into the file (None: the whole file).
    start: float | None = None
    end: float | None = None
    # A list's columns beyond the known ones (CREMA-D's sentence, intensity…), as (name, value) text.
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def segment(self) -> tuple[float, float] | None:
        return None if self.start is None or self.end is None else (self.start, self.end)


@dataclass(frozen=True)
class Reject:
    item: str  # utterance id, noise file or CSV row
    reason: str
    stage: str  # corpus | audio | noise | render
    path: str | None = None
    block: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_corpus(cfg: CorpusConfig, datasets: list[str],
                views: dict[str, View] | None = None) -> tuple[list[Utterance], list[Reject]]:
    """Utterances whose label one of ``datasets`` (resolved as ``views``; default: the presets) uses,
    and rejects for all the rest."""
    views = views if views is not None else resolve_views(datasets, {})

    def outside(label: str) -> str | None:
        """Why a label is not used (None: some view uses it)."""
        if any(v.class_of(label) is not None for v in views.values()):
            return None
        names = "; ".join(f"{d}: {' '.join(v.classes)}" for d, v in views.items())
        return f"label '{label}' not in the selected datasets ({names})"

    if cfg.kind == "csv":
        utts, rejects = read_csv_list(Path(cfg.root), cfg.label_column, unused=outside)
    elif cfg.kind == "audiofolder":
        utts, rejects = read_audiofolder(Path(cfg.root), cfg.label_column, unused=outside)
    else:
        utts, rejects = read_iemocap(Path(cfg.root), cfg.improvised_only)
    kept = []
    for u in utts:
        if (why := outside(u.label)) is None:
            kept.append(u)
        else:
            rejects.append(Reject(u.id, why, "corpus", u.path))
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

# What a list must hold, for `serwild build --help` and the errors that concern the file itself.
CSV_FORMAT = ("a UTF-8 CSV with a header line and one row per recording: path,label,speaker[,session][,start,end] "
              "(path relative to the CSV file; label in any spelling, e.g. ang/angry/Anger or a class of your "
              "views; session defaults to the speaker; start,end: seconds into the file for a segment, many "
              "rows may share a file)")
AUDIOFOLDER_FORMAT = ("a folder with metadata.csv: a header line with file_name and the label column, one row per "
                      "recording (file_name relative to the folder; speaker, session, start, end optional)")


EXTRA_COLUMN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a metadata key, an HF feature name and a CSV header alike
MAX_EXTRA_COLUMNS = 64


@dataclass(frozen=True)
class _Columns:
    path: str
    label: str
    speaker: bool  # the list has a speaker column (required for kind csv)
    session: bool
    segments: bool  # start and end columns
    contained: bool  # paths must stay inside the list's folder (an audiofolder, as HF's loader requires)
    extra: tuple[str, ...] = ()  # every other column: carried, as text, into each sample's metadata


def read_audiofolder(root: Path, label_column: str = "label",
                     unused: Callable[[str], str | None] | None = None) -> tuple[list[Utterance], list[Reject]]:
    """A folder laid out for HF's ``audiofolder`` (``metadata.csv``: ``file_name`` + a label column)."""
    meta = root if root.name == "metadata.csv" else root / "metadata.csv"
    if not meta.is_file():
        raise UsageError(f"corpus.root {root}: no metadata.csv found; corpus.kind audiofolder reads "
                         f"{AUDIOFOLDER_FORMAT}, label column '{label_column}' (corpus.label_column)")
    return read_csv_list(meta, label_column, audiofolder=True, unused=unused)


def read_csv_list(csv_path: Path, label_column: str = "label", audiofolder: bool = False,
                  unused: Callable[[str], str | None] | None = None) -> tuple[list[Utterance], list[Reject]]:
    """``path,label,speaker[,session][,start,end]`` (header required); paths relative to the CSV.
    ``unused``: why a (canonical) label is not used, or None; such a row is a reject before its
    segment claims any audio, so it never blocks a wanted segment that overlaps it."""
    if not csv_path.is_file():
        hint = " (a folder: for one with metadata.csv set corpus.kind=audiofolder)" if csv_path.is_dir() else ""
        raise UsageError(f"corpus.root {csv_path}: CSV list not found{hint}; corpus.kind csv reads {CSV_FORMAT}")
    text = read_utf8(csv_path)
    source = io.StringIO(text, newline="")
    reader = csv.DictReader(source)
    with _csv_errors(csv_path, text, source):
        cols = _columns(csv_path, list(reader.fieldnames or []), label_column, audiofolder)
        rows = list(reader)
    listed: list[tuple[str, Utterance]] = []  # (row, utterance)
    rejects: list[Reject] = []
    seen: set[str] = set()
    spans: dict[Path, list[tuple[float, float, str]]] = {}  # audio path → its kept spans, sorted
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        item = f"{csv_path.name}:{n}"
        got = _csv_row(csv_path, row, cols, item, spans, seen, unused)
        if isinstance(got, Reject):
            rejects.append(got)
        else:
            listed.append((item, got))
    utts, same = drop_same_audio(listed)
    return utts, rejects + same


def _columns(csv_path: Path, names: list[str], label_column: str, audiofolder: bool) -> _Columns:
    """The list's columns, or one line saying what the header must hold."""
    what = AUDIOFOLDER_FORMAT if audiofolder else CSV_FORMAT
    path_col = next((c for c in ("path", "file_name") if c in names), None)
    missing = [c for c, ok in (("path" if not audiofolder else "file_name", path_col is not None),
                               (label_column, label_column in names),
                               ("speaker", audiofolder or "speaker" in names)) if not ok]
    if ("start" in names) != ("end" in names):
        missing.append("end" if "start" in names else "start")
    if missing:
        found = ",".join(names)[:200] or "nothing"
        raise UsageError(f"{csv_path}: bad header: missing column(s) {', '.join(missing)} (the header reads "
                         f"{found!r}); expected {what}")
    assert path_col is not None
    known = {path_col, label_column, "speaker", "session", "start", "end"}
    extra = tuple(c for c in names if c not in known)
    bad = next((c for c in extra if not EXTRA_COLUMN.fullmatch(c)), None)
    if bad is not None or len(extra) > MAX_EXTRA_COLUMNS:
        why = (f"column name {bad[:80]!r} is not 1..64 letters, digits, '_' or '-'" if bad is not None
               else f"{len(extra)} extra columns (at most {MAX_EXTRA_COLUMNS})")
        raise UsageError(f"{csv_path}: bad header: {why}; extra columns are carried into every sample's metadata")
    return _Columns(path_col, label_column, "speaker" in names, "session" in names, "start" in names, audiofolder,
                    extra)


def _csv_row(csv_path: Path, row: dict, cols: _Columns, item: str, spans: dict[Path, list[tuple[float, float, str]]],
             seen: set[str], unused: Callable[[str], str | None] | None = None) -> Utterance | Reject:
    """One row → an utterance, or the reason it is not one."""
    rel = (row.get(cols.path) or "").strip()
    path = (csv_path.parent / rel.replace("\0", "")).resolve()
    raw_label = (row.get(cols.label) or "").strip()
    # An audiofolder without a speaker column: one speaker for all (a session split then says so).
    speaker = (row.get("speaker") or "").strip() if cols.speaker else "unknown"
    if not rel or not speaker:
        return Reject(item, "empty path or speaker", "corpus", rel or None)
    if not raw_label:
        return Reject(item, "empty label", "corpus", str(path))
    if len(raw_label) > MAX_LABEL_CHARS:
        return Reject(item, f"label longer than {MAX_LABEL_CHARS} characters", "corpus", str(path))
    if unused is not None and (why := unused(canonical_label(raw_label))) is not None:
        return Reject(item, why, "corpus", str(path))
    if cols.contained and not path.is_relative_to(csv_path.parent.resolve()):
        # ../x, an absolute path or a link out: rendered into shards, it would leave with a publish.
        return Reject(item, "file_name leaves the audiofolder (.., an absolute path or a link out of it)", "corpus",
                      rel[:200])
    if (problem := _audio_file_problem(rel, path)) is not None:
        return Reject(item, problem, "corpus", str(path))
    span = _segment(row) if cols.segments else None
    if isinstance(span, str):
        return Reject(item, span, "corpus", str(path))
    clash = _claim_span(spans.setdefault(path, []), span, item)
    if clash is not None:
        return Reject(item, clash, "corpus", str(path))
    session = ((row.get("session") or "").strip() if cols.session else "") or speaker
    name = Path(rel) if span is None else Path(rel).with_name(f"{Path(rel).stem}_{_ms(span[0])}-{_ms(span[1])}.seg")
    uid = unique_id(name, seen)
    start, end = span if span is not None else (None, None)
    extra = tuple((c, (row.get(c) or "").strip()[:MAX_LABEL_CHARS * 16]) for c in cols.extra)
    return Utterance(uid, str(path), rel, canonical_label(raw_label), speaker, session, start, end, extra)


def _segment(row: dict) -> tuple[float, float] | str | None:
    """A row's ``start``/``end`` (seconds), None for the whole file, or why they are not a segment."""
    a, b = (row.get("start") or "").strip(), (row.get("end") or "").strip()
    if not a and not b:
        return None
    if not a or not b:
        return "segment with only one of start and end"
    try:
        start, end = float(a), float(b)
    except ValueError:
        return f"segment start/end are not numbers of seconds ('{a[:40]}', '{b[:40]}')"
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        return f"segment start/end must be finite and start >= 0 (start {a[:40]}, end {b[:40]})"
    if end <= start:
        return f"segment of zero or negative length (start {start:g} s, end {end:g} s)"
    return start, end


def _claim_span(kept: list[tuple[float, float, str]], span: tuple[float, float] | None, item: str) -> str | None:
    """Add ``span`` (None: the whole file) to a file's kept spans, or say what it overlaps: one stretch
    of audio used twice could put the same block in train and test alike. The first row listed is kept."""
    lo, hi = span if span is not None else (0.0, math.inf)
    i = bisect.bisect_left(kept, (lo, hi, item))
    for j in (i - 1, i):
        if 0 <= j < len(kept) and kept[j][0] < hi and lo < kept[j][1]:
            other = kept[j]
            if span is None and other[1] == math.inf:
                return f"duplicate of {other[2]} (same audio file)"
            what = "the whole file" if other[1] == math.inf else f"its segment {other[0]:g}-{other[1]:g} s"
            mine = "the whole file" if span is None else f"segment {lo:g}-{hi:g} s"
            return f"{mine} overlaps {other[2]} ({what}) of the same file"
    kept.insert(i, (lo, hi, item))
    return None


def _ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}"


# ----------------------------------------------------------------------------- one recording, two paths


def drop_same_audio(listed: list[tuple[str, Utterance]]) -> tuple[list[Utterance], list[Reject]]:
    """The utterances whose file's bytes no earlier listed file has, and a reject for each later copy: a hard link
    or a copy of a recording, used twice, could put its blocks in train and test alike. Only files of equal size are
    hashed. Segments of one file share its path and are not copies of each other (their overlaps are checked when
    the list is read). ``listed`` pairs each utterance with the item a reject names."""
    paths = list(dict.fromkeys(u.path for _, u in listed))  # distinct files, in listing order
    by_size: dict[int, list[str]] = {}
    for path in paths:
        try:
            by_size.setdefault(os.stat(path).st_size, []).append(path)
        except OSError:
            continue  # unreadable here: the scan rejects it with its own reason
    copy_of: dict[str, str] = {}  # a later copy's path → the first listed file with its bytes
    for group in by_size.values():
        if len(group) < 2:
            continue
        owner: dict[str, str] = {}
        for path in group:  # in listing order, so the first listed is the one kept
            digest = file_sha256(path)
            if digest is not None and owner.setdefault(digest, path) != path:
                copy_of[path] = owner[digest]
    source = {u.path: u.source for _, u in reversed(listed)}  # the first listing's relative path
    kept = [u for _, u in listed if u.path not in copy_of]
    rejects = [Reject(item, f"same audio as '{source[copy_of[u.path]]}'", "corpus", u.path)
               for item, u in listed if u.path in copy_of]
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
    return decode_utf8(path.read_bytes(), str(path))


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
