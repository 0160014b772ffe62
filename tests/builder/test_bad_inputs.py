"""The bad-input matrix through the real build, and the CLI's exit-2 lines.

One serial build runs over an IEMOCAP-layout tree that holds every kind of bad input at
once, next to good utterances: damaged and odd audio, headers that ask for unbounded work
(1 Hz, 500 kHz, more blocks than ``audio.max_blocks_per_file``), an unsafe utterance id, a
summary line listed twice, unknown labels, missing files, bad noise files. Each input must
end up either in the shards (read back here with plain ``webdataset``, no project code) or
in ``rejects.jsonl`` with a reason that says why: never both, never neither (guarantee 1),
and no NaN reaches an image (guarantee 6).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

from serwild.builder import augment, render
from serwild.builder.build import run_build
from serwild.builder.config import AudioConfig
from serwild.builder.scan import load_noise
from serwild.cli import main
from serwild.config import load_config
from serwild.data.build import open_build
from serwild.progress import LOG_LINE
from tests.builder.conftest import make_noise, tone, write_dialog

SR = 16000
BAD_DIALOG = "Ses02F_impro02"


# ----------------------------------------------------------------------------- the matrix


def _tone(seconds: float, sr: int = SR) -> np.ndarray:
    return tone(seconds, 180.0, sr, seed=3)


def _truncate_data(p: Path) -> None:
    """A 2.5 s PCM_16 file whose header still says 2.5 s but whose data stops at 1.5 s."""
    sf.write(p, _tone(2.5), SR, subtype="PCM_16")
    header = p.stat().st_size - 2 * int(2.5 * SR)
    p.write_bytes(p.read_bytes()[:header + 2 * int(1.5 * SR)])


def _silent_middle(p: Path) -> None:
    y = _tone(3.0)
    y[SR:2 * SR] = 0.0
    sf.write(p, y, SR, subtype="PCM_16")


def _with_bad_sample(value: float, subtype: str) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        y = _tone(2.5).astype(np.float64)
        y[int(1.7 * SR)] = value
        sf.write(p, y, SR, subtype=subtype)
    return write


def rate_1hz(p: Path) -> None:
    """96 KB of samples under a header that says 1 Hz: 48 000 s, 48 000 one-sample "blocks"."""
    sf.write(p, (tone(3.0, 200.0) * 0.5 * 32767).astype(np.int16), 1, subtype="PCM_16")


def rate_500k(p: Path) -> None:
    sf.write(p, tone(0.1, 200.0, sr=500_000), 500_000, subtype="PCM_16")


def four_blocks(p: Path) -> None:  # over the matrix's audio.max_blocks_per_file=3
    sf.write(p, tone(4.2, 200.0), SR, subtype="PCM_16")


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    write: Callable[[Path], None] | None  # replaces the good wav; None keeps write_dialog's
    blocks: tuple[int, ...] | None  # blocks expected in the shards; None: the utterance is rejected
    reason: str  # regex the whole-utterance reject's reason must match ("" when used)
    uid: str = ""  # the utterance id, where not the generated one


CASES = [
    Case("empty", "ang", lambda p: p.write_bytes(b""), None, r"not readable audio"),
    Case("header_only", "sad", lambda p: sf.write(p, np.zeros(0, np.float32), SR), None, r"empty audio"),
    Case("truncated_data", "neu", _truncate_data, (0,), ""),  # libsndfile reads the frames present
    Case("cut_mid_header", "ang", lambda p: p.write_bytes(p.read_bytes()[:20]), None, r"not readable audio"),
    Case("not_audio", "sad", lambda p: p.write_bytes(b"<html>definitely not a wav</html>\n" * 300), None,
         r"not readable audio"),
    Case("nan_float", "neu", _with_bad_sample(float("nan"), "FLOAT"), None, r"NaN or Inf"),
    Case("inf_double", "ang", _with_bad_sample(float("inf"), "DOUBLE"), None, r"NaN or Inf"),
    Case("all_silent", "sad", lambda p: sf.write(p, np.zeros(int(2.5 * SR), np.float32), SR), None, r"silent"),
    Case("silent_middle", "neu", _silent_middle, (0, 2), ""),
    Case("shorter_than_block", "ang", lambda p: sf.write(p, _tone(0.6), SR), None, r"shorter than one 1 s block"),
    Case("stereo", "sad", lambda p: sf.write(p, np.stack([_tone(2.5), 0.5 * _tone(2.5)], 1), SR), (0, 1), ""),
    Case("pcm_u8", "neu", lambda p: sf.write(p, _tone(2.5), SR, subtype="PCM_U8"), (0, 1), ""),
    Case("pcm_24", "ang", lambda p: sf.write(p, _tone(2.5), SR, subtype="PCM_24"), (0, 1), ""),
    Case("rate_44k1", "sad", lambda p: sf.write(p, _tone(2.5, 44100), 44100, subtype="PCM_16"), (0, 1), ""),
    Case("rate_8k", "neu", lambda p: sf.write(p, _tone(2.5, 8000), 8000, subtype="PCM_16"), (0, 1), ""),
    Case("unknown_label", "zzz", None, None, r"unknown label code 'zzz'"),
    Case("other_label", "fru", None, None, r"label 'fru' not in the selected datasets"),
    Case("missing_wav", "ang", lambda p: p.unlink(), None, r"wav missing"),
    Case("rate_1hz", "ang", rate_1hz, None, r"sample rate 1 Hz is below 4000 Hz"),
    Case("rate_500k", "sad", rate_500k, None, r"sample rate 500000 Hz is above 384000 Hz"),
    Case("over_max_blocks", "neu", four_blocks, None, r"4 blocks .*audio\.max_blocks_per_file=3"),
    Case("unsafe_id", "ang", None, None, r"characters outside \[A-Za-z0-9_-\]", uid=f"{BAD_DIALOG}_M099.5"),
    Case("listed_twice", "sad", None, (0, 1), ""),  # its summary line twice: the first used, the second rejected
]
TWICE = len(CASES) - 1


def case_id(i: int) -> str:
    return CASES[i].uid or f"{BAD_DIALOG}_{'FM'[i % 2]}{i:03d}"


def make_bad_tree(root: Path) -> Path:
    """Good utterances (4 per label, 2.5 s) in session 1, every bad case in session 2."""
    release = root / "IEMOCAP_full_release"
    labels = ["ang", "hap", "exc", "sad", "neu"]
    good = [(f"Ses01F_impro01_{'FM'[i % 2]}{i:03d}", labels[i % 5], 2.5) for i in range(20)]
    write_dialog(release, 1, "Ses01F_impro01", good)
    write_dialog(release, 2, BAD_DIALOG, [(case_id(i), c.label, 2.5) for i, c in enumerate(CASES)])
    wav_dir = release / "Session2" / "sentences" / "wav" / BAD_DIALOG
    for i, c in enumerate(CASES):
        if c.write is not None:
            c.write(wav_dir / f"{case_id(i)}.wav")
    txt = release / "Session2" / "dialog" / "EmoEvaluation" / f"{BAD_DIALOG}.txt"
    twice = next(line for line in txt.read_text().splitlines() if f"\t{case_id(TWICE)}\t" in line)
    txt.write_text(txt.read_text() + twice + "\n")  # the same summary line again, as in a merged copy
    write_dialog(release, 2, "Ses02M_script01_1", [("Ses02M_script01_1_F000", "ang", 2.5)])
    return release


def make_bad_noise(noise_dir: Path) -> Path:
    """Two good noise files (conftest) plus four that must be rejected without stopping the build."""
    make_noise(noise_dir)
    (noise_dir / "broken.wav").write_bytes(b"not a wav at all")
    _with_bad_sample(float("nan"), "FLOAT")(noise_dir / "nan.wav")
    sf.write(noise_dir / "short.wav", _tone(0.5), SR)
    sf.write(noise_dir / "silent.wav", np.zeros(8 * SR, np.float32), SR)
    return noise_dir


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("bad")
    release = make_bad_tree(tmp / "corpus")
    make_bad_noise(tmp / "noise")
    cfg = load_config(None, [
        "corpus.kind=iemocap", f"corpus.root={tmp / 'corpus'}", f"noise.dir={tmp / 'noise'}",
        f"out={tmp / 'shards'}", "shard.max_samples=25", "snr_db=[15, 40]", "audio.max_blocks_per_file=3"])
    return run_build(cfg, executor="serial"), release


# ----------------------------------------------------------------------------- reading back (no project code)


def read_samples(build: Path) -> list[dict]:
    """Every sample of every listed shard, as plain webdataset gives it (raw bytes)."""
    manifest = json.loads((build / "manifest.json").read_text())
    urls = [str(build / s["path"]) for s in manifest["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def read_rejects(build: Path) -> list[dict]:
    return [json.loads(line) for line in (build / "rejects.jsonl").read_text().splitlines()]


def emo_evaluation_ids(release: Path) -> set[str]:
    """Every utterance id of the EmoEvaluation summary lines, parsed here independently."""
    ids = set()
    for txt in release.glob("Session*/dialog/EmoEvaluation/*.txt"):
        for line in txt.read_text().splitlines():
            m = re.match(r"^\[[\d.]+ - [\d.]+\]\t(\S+)\t", line)
            if m:
                ids.add(m.group(1))
    return ids


def whole_rejects(rejects: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rejects:
        if r["stage"] in ("corpus", "audio") and r["block"] is None:
            out[r["item"]].append(r)
    return out


def used_blocks(samples: list[dict]) -> dict[str, dict[tuple[str, str], set[int]]]:
    """utterance → (dataset, condition) → block indices found in the shards."""
    out: dict[str, dict[tuple[str, str], set[int]]] = defaultdict(lambda: defaultdict(set))
    for s in samples:
        meta = json.loads(s["json"])
        out[meta["utterance"]][(meta["dataset"], meta["condition"])].add(meta["block"])
    return out


# ----------------------------------------------------------------------------- guarantee 1


def test_every_utterance_is_used_or_rejected_exactly_once(bad_build: tuple[Path, Path]) -> None:
    build, release = bad_build
    ids = emo_evaluation_ids(release)
    assert len(ids) == 20 + len(CASES) + 1
    used = set(used_blocks(read_samples(build)))
    rejected = whole_rejects(read_rejects(build))
    second = rejected.pop(case_id(TWICE))  # its second listing; the first is used
    assert len(second) == 1 and "duplicate" in second[0]["reason"] and case_id(TWICE) in used, second
    assert not used & set(rejected), f"both used and rejected: {sorted(used & set(rejected))}"
    assert used | set(rejected) == ids, f"neither used nor rejected: {sorted(ids - used - set(rejected))}"
    assert all(len(v) == 1 for v in rejected.values()), "an utterance is rejected more than once"
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["totals"]["utterances_used"] == len(used)


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c.blocks is None],
                         ids=[c.name for c in CASES if c.blocks is None])
def test_rejected_input_has_its_reason(bad_build: tuple[Path, Path], i: int) -> None:
    build, _ = bad_build
    case, uid = CASES[i], case_id(i)
    found = whole_rejects(read_rejects(build)).get(uid)
    assert found, f"{case.name} ({uid}) is not in rejects.jsonl"
    assert re.search(case.reason, found[0]["reason"]), f"{case.name}: reason {found[0]['reason']!r}"
    assert found[0]["path"].endswith(f"{uid}.wav")
    assert uid not in used_blocks(read_samples(build))


@pytest.mark.parametrize("i", [i for i, c in enumerate(CASES) if c.blocks is not None],
                         ids=[c.name for c in CASES if c.blocks is not None])
def test_usable_input_is_in_every_condition_of_both_datasets(bad_build: tuple[Path, Path], i: int) -> None:
    build, _ = bad_build
    case, uid = CASES[i], case_id(i)
    got = used_blocks(read_samples(build)).get(uid, {})
    # ang/sad/neu belong to both AHSN and AESN; every condition of a block travels together.
    expected = {(d, c): set(case.blocks or ()) for d in ("ahsn", "aesn") for c in ("clean", "snr15", "snr40")}
    assert dict(got) == expected, f"{case.name}: blocks in shards {dict(got)}"


def test_silent_block_is_rejected_and_its_neighbours_used(bad_build: tuple[Path, Path]) -> None:
    build, _ = bad_build
    uid = case_id(next(i for i, c in enumerate(CASES) if c.name == "silent_middle"))
    block_rejects = [r for r in read_rejects(build) if r["item"] == uid]
    assert [(r["stage"], r["block"]) for r in block_rejects] == [("audio", 1)]
    assert "silent block" in block_rejects[0]["reason"]


def test_bad_noise_files_are_rejected_and_the_rest_used(bad_build: tuple[Path, Path]) -> None:
    build, _ = bad_build
    noise_rejects = {r["item"]: r["reason"] for r in read_rejects(build) if r["stage"] == "noise"}
    assert set(noise_rejects) == {"broken.wav", "nan.wav", "short.wav", "silent.wav"}
    assert "not readable" in noise_rejects["broken.wav"]
    assert "NaN or Inf" in noise_rejects["nan.wav"]
    assert "too short" in noise_rejects["short.wav"]
    assert "silent" in noise_rejects["silent.wav"]
    noises = {json.loads(s["json"])["noise"] for s in read_samples(build)}
    assert noises - {None} <= {"hum.wav", "babble.wav"}


def test_rejects_are_well_formed_and_nothing_failed_at_render(bad_build: tuple[Path, Path]) -> None:
    build, _ = bad_build
    rejects = read_rejects(build)
    for r in rejects:
        assert set(r) == {"item", "reason", "stage", "path", "block"}
        assert r["reason"].strip() and "\n" not in r["reason"]
    # Every bad input is caught while scanning, before any shard task: a render-stage reject
    # here would mean a bad block reached the renderer.
    assert not [r for r in rejects if r["stage"] == "render"]
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["totals"]["rejects"] == len(rejects)


# ----------------------------------------------------------------------------- guarantee 6 and the shards


def test_images_decode_finite_and_not_blank(bad_build: tuple[Path, Path]) -> None:
    build, _ = bad_build
    samples = read_samples(build)
    odd = {case_id(i) for i, c in enumerate(CASES) if c.blocks is not None}
    checked = 0
    for s in samples:
        meta = json.loads(s["json"])
        for field in ("snr_db", "noise_gain", "noise_offset_s", "start_s"):
            assert meta[field] is None or math.isfinite(meta[field]), (s["__key__"], field)
        if meta["utterance"] not in odd and checked > 10:
            continue  # decode every odd-format sample and a few good ones
        img = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))
        assert img.shape == (257, 259, 3) and img.dtype == np.uint8
        # A NaN anywhere in the STFT collapses the dB image to one colour; speech never does.
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, s["__key__"]
        checked += 1
    assert checked >= 10 + len(odd) * 2 * 3


def test_manifest_counts_match_the_shards(bad_build: tuple[Path, Path]) -> None:
    build, _ = bad_build
    manifest = json.loads((build / "manifest.json").read_text())
    samples = read_samples(build)
    assert manifest["totals"]["samples"] == len(samples) == sum(s["count"] for s in manifest["shards"])
    assert open_build(build).verify() == []
    # A key is unique within a dataset (the same block sits in both AHSN and AESN).
    keys = [(json.loads(s["json"])["dataset"], s["__key__"]) for s in samples]
    assert len(keys) == len(set(keys))
    for rec in manifest["shards"]:
        metas = [json.loads(s["json"]) for s in wds.WebDataset(str(build / rec["path"]), shardshuffle=False)]
        assert len(metas) == rec["count"]
        assert {m["condition"] for m in metas} == {rec["condition"]}


def test_mixing_noise_into_a_silent_block_never_divides_by_zero(tmp_path: Path) -> None:
    # Under errstate(raise) any 0/0, x/0 or log(0) in the mix → normalise → render path throws.
    noise = load_noise(str(make_noise(tmp_path / "noise") / "babble.wav"), SR)[:SR]
    with np.errstate(all="raise"):
        for clean in (np.zeros(SR, np.float32), np.full(SR, 1e-30, np.float32)):
            for snr in (15.0, 20.0, 40.0):
                y, lam = augment.mix_at_snr(clean, noise, snr)
                y = augment.peak_normalise(y)
                assert np.isfinite(y).all() and math.isfinite(lam)
                img = np.asarray(Image.open(io.BytesIO(render.Renderer(AudioConfig()).png(y))).convert("RGB"))
                assert img.shape == (257, 259, 3)
        y, lam = augment.mix_at_snr(np.zeros(SR, np.float32), noise, 15.0)
    assert lam == 0.0 and not y.any()


# ----------------------------------------------------------------------------- CLI: one line, exit 2


def _tiny_tree(root: Path) -> Path:
    write_dialog(root / "IEMOCAP_full_release", 1, "Ses01F_impro01",
                 [(f"Ses01F_impro01_F{i:03d}", "ang", 1.2) for i in range(2)])
    return root


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]  # progress: not errors
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"serwild {argv[0]}: error: "), lines[0]
    return lines[0]


def _write_config(tmp_path: Path, corpus: Path, noise: Path, kind: str = "iemocap") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"corpus:\n  kind: {kind}\n  root: {corpus}\nnoise:\n  dir: {noise}\n"
                   f"out: {tmp_path / 'shards'}\nsnr_db: [15]\n")
    return cfg


@pytest.mark.parametrize(("kind", "root", "expect"), [
    ("iemocap", "nope", r"corpus\.root .*nope does not exist"),
    ("iemocap", "empty_dir", r"corpus\.root .*no IEMOCAP_full_release/Session\*"),
    ("csv", "nope.csv", r"corpus\.root .*nope\.csv: CSV list not found"),
])
def test_cli_bad_corpus_root(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, root: str,
                             expect: str) -> None:
    (tmp_path / "empty_dir").mkdir()
    cfg = _write_config(tmp_path, tmp_path / root, make_noise(tmp_path / "noise", seconds=4.0), kind)
    line = _cli_error(capsys, ["build", "--config", str(cfg), "--serial"])
    assert re.search(expect, line), line
    assert not (tmp_path / "shards").exists()  # nothing half-written


@pytest.mark.parametrize(("noise", "expect"), [
    ("missing", r"noise\.dir .*missing does not exist"),
    ("empty", r"noise\.dir .*empty has no \.wav/\.flac/\.ogg files"),
    ("all_bad", r"noise\.dir .*all_bad: no usable noise file .*broken\.wav"),
])
def test_cli_bad_noise_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], noise: str, expect: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "all_bad").mkdir()
    (tmp_path / "all_bad" / "broken.wav").write_bytes(b"junk")
    cfg = _write_config(tmp_path, _tiny_tree(tmp_path / "corpus"), tmp_path / noise)
    line = _cli_error(capsys, ["build", "--config", str(cfg), "--serial"])
    assert re.search(expect, line), line
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize(("text", "overrides", "expect"), [
    (None, [], r"cannot read config .*cfg\.yaml"),  # no such file
    ("corpus: [unclosed\n  root: x\n", [], r"config .*cfg\.yaml line \d+ is not valid YAML"),
    ("- just\n- a list\n", [], r"must be a mapping of keys, not list"),
    ("corpus:\n  kind: iemocap\n  rot: /data\n", [], r"unknown config key 'corpus\.rot'"),
    ("seed: 1\n", ["split.strtegy=session"], r"unknown config key 'split\.strtegy'"),
    ("seed: 1\n", ["split.strategy=random"], r"'split\.strategy': expected one of block \| utterance \| speaker \| "
                                              r"session"),
    ("seed: 1\n", ["shard.max_samples=lots"], r"'shard\.max_samples': expected an integer, got 'lots'"),
    ("seed: 1\n", ["shard.max_samples=12.5"], r"'shard\.max_samples': expected an integer, got 12\.5"),
    ("seed: 1\n", ["split.folds=1"], r"split\.folds must be at least 2"),
    ("seed: 1\n", ["snr_db=[15, loud]"], r"'snr_db\[1\]': expected a number"),
    ("seed: 1\n", ["noseparator"], r"override 'noseparator' must look like key=value"),
])
def test_cli_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None,
                        overrides: list[str], expect: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    if text is not None:
        cfg.write_text(text)
    line = _cli_error(capsys, ["build", "--config", str(cfg), "--serial", *overrides])
    assert re.search(expect, line), line


def test_numbers_in_exponent_notation_are_numbers(tmp_path: Path) -> None:
    """YAML 1.2 and every other reader take 1e9 and 1e-4 as numbers; PyYAML's 1.1 rules made them
    text (a config error for a number written plainly). A whole one fills an integer key."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train:\n  lr: 1e-3\n  samples_per_epoch: 2e3\n")
    loaded = load_config(cfg, ["train.scratch_lr=5E-5"])
    assert loaded.train.lr == 1e-3 and loaded.train.scratch_lr == 5e-5
    assert loaded.train.samples_per_epoch == 2000 and isinstance(loaded.train.samples_per_epoch, int)
