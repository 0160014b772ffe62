"""Label sets as config, CSV segments, the audiofolder layout, config discovery and log-friendly progress."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.builder.build import reject_summary
from serwild.builder.config import CorpusConfig
from serwild.builder.corpus import read_corpus
from serwild.builder.labels import resolve_views
from serwild.builder.render import Renderer
from serwild.builder.scan import scan_chunk
from serwild.cli import main
from serwild.config import AudioConfig, ConfigError, load_config, resolve_config_path
from serwild.errors import UsageError
from serwild.progress import LOG_LINE, LogProgress
from tests.builder.conftest import tone

SR = 16000


def _wav(path: Path, seconds: float, f0: float = 200.0, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, f0, seed=seed), SR, subtype="PCM_16")


def test_views_from_config_and_their_errors() -> None:
    cfg = load_config(None, ["views.rav.classes=[neutral, calm, Happy]", "views.m.classes=[ang, hap, sad, neu]",
                             "views.m.merge={excited: hap}", "datasets=[rav, m, ahsn]"])
    views = resolve_views(cfg.datasets, cfg.views)
    assert views["rav"].classes == ("neutral", "calm", "Happy") and views["rav"].class_of("HAPPINESS") == 2
    assert views["m"].class_of("exc") == 1 and views["ahsn"].class_of("exc") is None
    assert cfg.train.dataset == "ahsn"  # ahsn is built, so the trainer's default stands
    assert load_config(None, ["views.rav.classes=[neu, calm]", "datasets=[rav]"]).train.dataset == "rav"
    bad = {
        "datasets=[ravdess]": "'ravdess' is neither a built-in view (ahsn, aesn) nor defined under 'views:'",
        "views.ahsn.classes=[a, b]": "ahsn is a built-in view",
        "views.x.classes=[calm]": "'views.x.classes' needs 2..1000 classes, got 1",
        "views.x.classes=[hap, happy]": "'hap' and 'happy' are the same label",
        "views.x.merge={exc: calm}": "not one of its classes",
        "views.x/y.classes=[a, b]": "a view name is 1..64 letters",
    }
    for item, expect in bad.items():
        over = [item, "datasets=[x]"] if item.startswith("views.x.") else [item]
        if item.startswith("views.x.merge"):
            over.append("views.x.classes=[hap, sad]")
        with pytest.raises(ConfigError, match=None) as e:
            load_config(None, over)
        assert expect in str(e.value) and "\n" not in str(e.value), (item, str(e.value))


def _segment_corpus(tmp_path: Path) -> Path:
    _wav(tmp_path / "long.wav", 10.0)
    _wav(tmp_path / "calm.wav", 2.0, 150.0, seed=1)
    (tmp_path / "list.csv").write_text(
        "path,label,speaker,session,start,end\n"
        "long.wav,calm,s1,d1,0,3\n"          # 2: kept
        "long.wav,happy,s2,d1,3,6.5\n"       # 3: kept (touching is not overlapping)
        "long.wav,sad,s1,d1,5,7\n"           # 4: overlaps row 3
        "long.wav,sad,s1,d1,8,8\n"           # 5: zero length
        "long.wav,sad,s1,d1,9,12\n"          # 6: past the end (found by the scan)
        "long.wav,sad,s1,d1,7,\n"            # 7: only a start
        "calm.wav,Calm,s3,,,\n"              # 8: a whole file
        "calm.wav,calm,s3,,0.5,1\n"          # 9: inside a file already used whole
        "long.wav,fru,s1,d1,7,8.5\n"         # 10: a label no view uses…
        "long.wav,hap,s2,d1,7,8.5\n")        # 11: …does not block this row (it did: "overlaps list.csv:10")
    return tmp_path / "list.csv"


def test_csv_segments_each_row_used_or_rejected_once(tmp_path: Path) -> None:
    listing = _segment_corpus(tmp_path)
    views = resolve_views(["v"], {"v": load_config(None, ["views.v.classes=[calm, hap, sad]", "datasets=[v]"])
                                  .views["v"]})
    utts, rejects = read_corpus(CorpusConfig(kind="csv", root=str(listing)), ["v"], views)
    assert [(u.id, u.label, u.segment) for u in utts] == [
        ("long_0-3000", "calm", (0.0, 3.0)), ("long_3000-6500", "hap", (3.0, 6.5)),
        ("long_9000-12000", "sad", (9.0, 12.0)), ("calm", "calm", None), ("long_7000-8500", "hap", (7.0, 8.5))]
    reasons = {r.item: r.reason for r in rejects}
    assert reasons["list.csv:4"] == "segment 5-7 s overlaps list.csv:3 (its segment 3-6.5 s) of the same file"
    assert reasons["list.csv:5"] == "segment of zero or negative length (start 8 s, end 8 s)"
    assert reasons["list.csv:7"] == "segment with only one of start and end"
    assert reasons["list.csv:9"] == "segment 0.5-1 s overlaps list.csv:8 (the whole file) of the same file"
    assert reasons["list.csv:10"].startswith("label 'fru' not in the selected datasets (v: calm hap sad)")
    assert len(utts) + len(rejects) == 10  # every row once
    ok, bad = scan_chunk(utts, AudioConfig())
    assert [b.reason for b in bad] == ["segment ends at 12 s, past the file's end (10.000 s)"]
    # blocks are cut inside the segment only: 3.5 s → 3 blocks, starting at the segment's start
    seg = next(s for s in ok if s.utt.id == "long_3000-6500")
    assert seg.blocks == (0, 1, 2)
    y = Renderer(AudioConfig()).block(seg.utt.path, 1, SR, seg.utt.segment)
    whole, _ = sf.read(tmp_path / "long.wav", dtype="float32")
    assert np.allclose(y, whole[4 * SR:5 * SR], atol=1e-6)


def test_an_audiofolders_file_name_never_leaves_the_folder(tmp_path: Path) -> None:
    """HF's audiofolder reads files inside the folder; a file_name of ``..``, an absolute path or a
    link out would be rendered into the shards (and leave with a publish). Each is a reject, kept in
    rejects.jsonl with its reason; the files inside are read."""
    outside = tmp_path / "private"
    _wav(outside / "x.wav", 1.5)
    _wav(tmp_path / "af" / "a.wav", 1.5)
    (tmp_path / "af" / "out").symlink_to(outside)
    (tmp_path / "af" / "metadata.csv").write_text(
        f"file_name,emotion\na.wav,calm\n../private/x.wav,calm\n{outside}/x.wav,calm\nout/x.wav,calm\n")
    views = resolve_views(["v"], load_config(None, ["views.v.classes=[calm, ang]", "datasets=[v]"]).views)
    utts, rejects = read_corpus(CorpusConfig(kind="audiofolder", root=str(tmp_path / "af"), label_column="emotion"),
                                ["v"], views)
    assert [u.source for u in utts] == ["a.wav"]
    assert [(r.item, r.reason.split(" (")[0]) for r in rejects] == [
        (f"metadata.csv:{n}", "file_name leaves the audiofolder") for n in (3, 4, 5)]
    # a CSV list names its files where they are: the same paths are the user's to give
    (tmp_path / "af" / "list.csv").write_text("path,label,speaker\n../private/x.wav,calm,s1\n")
    utts, rejects = read_corpus(CorpusConfig(kind="csv", root=str(tmp_path / "af" / "list.csv")), ["v"], views)
    assert len(utts) == 1 and not rejects


def test_audiofolder_and_csv_format_errors(tmp_path: Path) -> None:
    _wav(tmp_path / "af" / "a.wav", 1.5)
    _wav(tmp_path / "af" / "b" / "c.wav", 1.5, 300.0, seed=2)
    (tmp_path / "af" / "metadata.csv").write_text("file_name,emotion\na.wav,calm\nb/c.wav,Angry\n")
    cfg = CorpusConfig(kind="audiofolder", root=str(tmp_path / "af"), label_column="emotion")
    views = resolve_views(["v"], load_config(None, ["views.v.classes=[calm, ang]", "datasets=[v]"]).views)
    utts, rejects = read_corpus(cfg, ["v"], views)
    assert [(u.source, u.label, u.speaker) for u in utts] == [("a.wav", "calm", "unknown"),
                                                              ("b/c.wav", "ang", "unknown")]
    assert not rejects
    with pytest.raises(UsageError, match=r"bad header: missing column\(s\) emotion2 \(the header reads "
                                         r"'file_name,emotion'\); expected a folder with metadata"):
        read_corpus(CorpusConfig(kind="audiofolder", root=str(tmp_path / "af"), label_column="emotion2"), ["v"], views)
    with pytest.raises(UsageError, match=r"no metadata\.csv found; corpus\.kind audiofolder reads a folder"):
        read_corpus(CorpusConfig(kind="audiofolder", root=str(tmp_path)), ["v"], views)
    with pytest.raises(UsageError, match=r"CSV list not found \(a folder: .*audiofolder\); corpus\.kind csv reads "
                                         r"a UTF-8 CSV with a header line"):
        read_corpus(CorpusConfig(kind="csv", root=str(tmp_path / "af")), ["v"], views)
    (tmp_path / "l.csv").write_text("file,label\nx.wav,calm\n")
    with pytest.raises(UsageError, match=r"bad header: missing column\(s\) path, speaker \(the header reads "
                                         r"'file,label'\); expected a UTF-8 CSV"):
        read_corpus(CorpusConfig(kind="csv", root=str(tmp_path / "l.csv")), ["v"], views)


def test_build_help_documents_the_csv_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    for needle in ("path,label,speaker,session,start,end", "relative to the CSV file", "audiofolder",
                   "merge: {exc: hap}", "configs/csv.yaml"):
        assert needle in text, needle


def test_reject_summary_counts_labels_outside_views(tmp_path: Path) -> None:
    rows = [{"stage": "corpus", "reason": f"label '{x}' not in the selected datasets (v: a b)"} for x in "xxy"]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert reject_summary(tmp_path / "r.jsonl") == {"corpus: label 'x' in no selected dataset": 2,
                                                    "corpus: label 'y' in no selected dataset": 1}


def test_config_discovery_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the installed copies answer
    for name in ("demo-tiny", "demo-tiny.yaml", "configs/demo-tiny.yaml"):
        assert resolve_config_path(name).name == "demo-tiny.yaml" and resolve_config_path(name).is_file()
    with pytest.raises(ConfigError, match=r"cannot read config nope: .*installed: .*demo-tiny.*csv|installed: .*csv"):
        resolve_config_path("nope")
    assert main(["config", "show", "--config", "configs/csv.yaml", "views.six.allow_empty=true"]) == 0
    out = capsys.readouterr().out.splitlines()
    keyed = [line for line in out[1:] if ":" in line]
    assert all("  # " in line for line in keyed), [line for line in keyed if "  # " not in line]
    assert any(line.strip().startswith("allow_empty: true  # ") for line in out)
    assert main(["config", "show", "--config", "nope"]) == 2
    assert "installed:" in capsys.readouterr().err


def test_log_progress_lines_without_carriage_returns() -> None:
    buf = io.StringIO()
    with LogProgress(40, "build shards", "shard", "build", buf) as bar:
        for _ in range(40):
            bar.update(1)
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and all(LOG_LINE.match(line) for line in lines)
    assert lines[0].endswith("serwild build: build shards: started (40 shard)")
    assert sum("ETA" in line for line in lines) == 9  # every 10 %, the last one is "done"
    assert "4/40 shard (10%)" in lines[1] and "shard/s" in lines[1]
    assert lines[-1].split(": ")[-1].startswith("done 40/40")
    slow = io.StringIO()
    bar = LogProgress(None, "scan", "task", "build", slow, every_s=0.05)
    bar.update(1)
    import time

    deadline = time.monotonic() + 30  # a hang guard: the timer's line comes within ~every_s
    while "elapsed" not in slow.getvalue() and time.monotonic() < deadline:  # nothing else updates meanwhile
        time.sleep(0.01)
    bar.close()
    assert any("1 task" in line and "elapsed" in line for line in slow.getvalue().splitlines()[1:-1])


def test_non_tty_build_prints_stage_and_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.builder.conftest import make_noise, make_tree

    make_tree(tmp_path / "corpus", per_class=2)
    make_noise(tmp_path / "noise")
    argv = ["build", "--serial", "corpus.kind=iemocap", f"corpus.root={tmp_path / 'corpus'}",
            f"noise.dir={tmp_path / 'noise'}", f"out={tmp_path / 'out'}", "datasets=[ahsn]", "snr_db=[15]",
            "split.folds=2", "shard.max_samples=20"]
    rc = main(argv)  # in-process: stderr is captured, not a terminal, as under nohup or a scheduler
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "\r" not in err
    for needle in ("serwild build: corpus:", "serwild build: scan audio: started", "serwild build: plan:",
                   "serwild build: build shards: done", "serwild build: writing manifest.json"):
        assert needle in err, (needle, err[-2000:])


def test_allow_empty_warns_once_per_part_however_many_classes(capsys: pytest.CaptureFixture[str]) -> None:
    """A view of 300 classes where most are empty: one warning line for training, one for test
    (it was a line per class: 600 lines)."""
    from serwild.builder.corpus import Utterance
    from serwild.builder.plan import check_classes
    from serwild.builder.scan import ScannedUtterance

    by_id = {f"u{i}": ScannedUtterance(Utterance(f"u{i}", f"/x/u{i}.wav", f"u{i}.wav", "c0", "s", "s"), SR, (0,))
             for i in range(2)}
    classes = tuple(f"c{i}" for i in range(300))
    check_classes([("u0", 0)], [("u1", 0)], by_id, classes, "many", allow_empty=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"serwild build: warning: dataset 'many': 299 class(es) have no {part} sample: "
                   + ", ".join(f"'c{i}'" for i in range(1, 11)) + " and 289 more (allowed by allow_empty; the hub "
                   "card says so)" for part in ("training", "test")]
