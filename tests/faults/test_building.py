"""Building under hostile corpora and configs: real files, real processes, real faults.

A recording listed twice under two paths (a hard link, a copy) is one recording; a config
value that asks for unbounded work (``audio.n_fft: 1e8``), an optimiser value that cannot
train, a config file that is not UTF-8, nested thousands deep, holds a 5000-digit number or
repeats a key, a CSV field past the csv module's limit, and folds that a class cannot fill
are each one line naming the key or file, exit status 2, no traceback. A Ray build leaves
nothing in the system's temp folder, and one that fills its disk leaves no temp shard of any
worker, even while the machine is busy.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from serwild.builder.build import run_build
from serwild.cli import main
from serwild.config import ConfigError, config_from_resolved, load_config, to_dict
from tests.builder.conftest import make_noise, tone
from tests.conftest import nothing_left, short_temp_folder
from tests.faults import procs
from tests.faults.procs import SERWILD, full_disk, one_line

SR = 16000
LABELS = ("ang", "hap", "sad", "neu")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``serwild <argv>`` in this process, expected to fail with one line and status 2."""
    rc = main(list(argv))
    return one_line(capsys.readouterr().err, rc)


def csv_corpus(root: Path, n: int, seconds: float = 1.5) -> list[str]:
    """``n`` distinct recordings (4 classes, 4 speakers) as WAVs under ``root``; the CSV rows."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sf.write(root / f"u{i:02d}.wav", tone(seconds, 140.0 + 11 * i, seed=i), SR, subtype="PCM_16")
        rows.append(f"u{i:02d}.wav,{LABELS[i % 4]},spk{i % 4},s{i % 4}")
    return rows


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("path,label,speaker,session\n" + "".join(r + "\n" for r in rows))
    return path


def read_rejects(build: Path) -> list[dict]:
    return [json.loads(x) for x in (build / "rejects.jsonl").read_text().splitlines()]


def shard_samples(build: Path) -> list[dict]:
    """Every sample's metadata, read with the standard tarfile module (no serwild code)."""
    out = []
    for tar_path in sorted(build.rglob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    f = tar.extractfile(m)
                    assert f is not None
                    out.append(json.loads(f.read()))
    return out


# ----------------------------------------------------------------------------- 3. one recording, two paths


def test_a_recording_under_two_paths_is_used_once(tmp_path: Path) -> None:
    """40 listed files, 14 of which are a hard link or a copy of another: with a split by
    utterance, no recording may be in both train and test, and every row is accounted for."""
    corpus = tmp_path / "corpus"
    rows = csv_corpus(corpus, 26)
    (corpus / "more").mkdir()
    for i in range(14):  # 7 hard links and 7 byte copies, each under another name and speaker
        src, dst = corpus / f"u{i:02d}.wav", corpus / "more" / f"x{i:02d}.wav"
        os.link(src, dst) if i % 2 == 0 else shutil.copyfile(src, dst)
        rows.append(f"more/x{i:02d}.wav,{LABELS[i % 4]},spk{(i + 1) % 4},s{(i + 1) % 4}")
    cfg = load_config(None, ["corpus.kind=csv", f"corpus.root={write_csv(corpus / 'list.csv', rows)}",
                             f"out={tmp_path / 'shards'}", "snr_db=[]", "datasets=[ahsn]", "split.folds=2",
                             "split.strategy=utterance", "split.test_fraction=0.3", "shard.max_samples=16"])
    build = run_build(cfg, executor="serial")
    dups = sorted((r["item"], r["reason"]) for r in read_rejects(build) if "same audio" in r["reason"])
    assert [d[0] for d in dups] == [f"list.csv:{28 + i}" for i in range(14)], dups
    assert all(reason == f"same audio as 'u{i:02d}.wav'" for i, (_, reason) in enumerate(dups)), dups
    samples = shard_samples(build)
    splits_of = defaultdict(set)  # recording content → the splits holding a block of it
    for s in samples:
        splits_of[hashlib.sha256((corpus / s["source"]).read_bytes()).hexdigest()].add(s["split"])
    assert splits_of and all(len(v) == 1 for v in splits_of.values()), splits_of
    # Exactly once: each row either gave samples or is rejected, never both.
    used = {s["source"] for s in samples}
    rejected = {r["item"] for r in read_rejects(build) if r["block"] is None}
    row_src = {f"list.csv:{n}": r.split(",")[0] for n, r in enumerate(rows, start=2)}
    assert {n for n, src in row_src.items() if src in used} | rejected == set(row_src)
    assert not {n for n, src in row_src.items() if src in used} & rejected


# ----------------------------------------------------------------------------- 8, 12. bounded, sane values

BAD_VALUES = [  # (override, what the one line must name)
    ("audio.n_fft=100000000", ("'audio.n_fft'", "16..8192")),
    ("audio.n_fft=8", ("'audio.n_fft'", "16..8192")),
    ("audio.hop_length=0", ("'audio.hop_length'", "1..")),
    ("audio.hop_length=1", ("audio.hop_length", "4096")),  # 16001 image columns
    ("audio.block_seconds=100000.0", ("'audio.block_seconds'", "0.1..30")),
    ("audio.sample_rate=100000000", ("'audio.sample_rate'", "4000..384000")),
    ("audio.max_blocks_per_file=1000000000", ("'audio.max_blocks_per_file'", "1..86400")),
    ("audio.top_db=1000000", ("'audio.top_db'",)),
    ("audio.colormap=no_such_map", ("'audio.colormap'", "no_such_map", "matplotlib")),
    ("shard.max_samples=1000000000", ("'shard.max_samples'", "1..100000")),
    ("split.folds=1000000", ("'split.folds'", "2..100")),
    ("ray.num_cpus=-1", ("'ray.num_cpus'", "1..4096")),
    ("ray.num_cpus=0", ("'ray.num_cpus'", "1..4096")),
    ("ray.connect_timeout_s=0", ("'ray.connect_timeout_s'", "1..600")),
    ("ray.address=ray://head:10001", ("'ray.address'", "HOST:PORT", "ray://head:10001")),
    ("ray.address=head", ("'ray.address'", "HOST:PORT", "'head'")),
    ("seed=" + "9" * 40, ("'seed'", "0..9223372036854775807", "a 133-bit number")),
    ("snr_db=[" + ", ".join(str(x) for x in range(40)) + "]", ("'snr_db'", "at most 16")),
    ("snr_db=[100000]", ("'snr_db'", "-50..100")),
    ("train.epochs=1000000000", ("'train.epochs'", "1..10000")),
    ("train.batch_size=1000000000", ("'train.batch_size'", "1..65536")),
    ("train.samples_per_epoch=1000000000000", ("'train.samples_per_epoch'", "1..1000000000")),
    ("train.num_workers=100000", ("'train.num_workers'", "0..256")),
    ("train.prefetch_factor=100000", ("'train.prefetch_factor'", "1..64")),
    ("train.shuffle_buffer=1000000000", ("'train.shuffle_buffer'", "1..100000")),
    ("train.lr_step=1000000000", ("'train.lr_step'", "1..10000")),
    ("train.timeout_s=1000000000", ("'train.timeout_s'", "1..86400")),
    ("eval.batch_size=1000000000", ("'eval.batch_size'", "1..65536")),
    ("eval.num_workers=100000", ("'eval.num_workers'", "0..256")),
    ("eval.bootstrap=1000000000", ("'eval.bootstrap'", "0..100000")),
    ("eval.bootstrap_seed=-1", ("'eval.bootstrap_seed'", "0..")),
    # 12: optimiser values that crash or silently train nothing
    ("train.lr=-0.1", ("'train.lr'", "> 0")),
    ("train.lr=0", ("'train.lr'", "> 0")),
    ("train.new_layer_lr=0", ("'train.new_layer_lr'", "> 0")),
    ("train.scratch_lr=-1", ("'train.scratch_lr'", "> 0")),
    ("train.lr=1000", ("'train.lr'", "<= 10")),
    ("train.momentum=-0.5", ("'train.momentum'", "[0, 1)")),
    ("train.momentum=1.5", ("'train.momentum'", "[0, 1)")),
    ("train.weight_decay=-0.001", ("'train.weight_decay'", "[0, 1)")),
]


@pytest.mark.parametrize(("override", "needles"), BAD_VALUES, ids=[o[:40] for o, _ in BAD_VALUES])
def test_a_config_value_out_of_range_is_one_line(override: str, needles: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    # The same value inside a checkpoint's or a manifest's config is refused on the way in.
    key, value = override.split("=", 1)
    data = to_dict(load_config(None))
    node = data
    *sections, last = key.split(".")
    for part in sections:
        node = node[part]
    node[last] = yaml.safe_load(value)
    with pytest.raises(ConfigError) as e2:
        config_from_resolved(data)
    assert all(n in str(e2.value) for n in needles), str(e2.value)


def test_a_huge_n_fft_is_refused_by_the_cli_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = cli(capsys, "build", "--serial", f"out={tmp_path / 'shards'}", "audio.n_fft=1e8")
    assert line.startswith("serwild build: error: ") and "'audio.n_fft'" in line, line
    line = cli(capsys, "build", "--serial", f"out={tmp_path / 'shards'}", "audio.n_fft=100000000")
    assert re.search(r"'audio\.n_fft'.*16\.\.8192", line), line
    assert not (tmp_path / "shards").exists()


def test_a_checkpoint_whose_config_asks_too_much_is_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import torch  # here: only this test needs it

    from serwild.processes.checkpoint import Checkpoint, save_checkpoint
    from tests.evaluate.conftest import write_build, write_checkpoint

    build = write_build(tmp_path / "shards", {"clean": (None, [2]), "snr15": (15.0, [2])})
    path = write_checkpoint(tmp_path / "run" / "best.pt", build)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["config"]["audio"]["n_fft"] = 100000  # past the bound, small enough to run were it let through
    save_checkpoint(path, Checkpoint.from_dict(ckpt))
    wav = tmp_path / "rec.wav"
    sf.write(wav, tone(1.5, 200.0), SR, subtype="PCM_16")
    line = cli(capsys, "predict", "--checkpoint", str(path), str(wav), "eval.device=cpu")
    assert re.search(r"'audio\.n_fft'.*16\.\.8192", line), line


# ----------------------------------------------------------------------------- 14. too few units per class


def test_fewer_units_of_a_class_than_folds_is_one_line_before_rendering(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    rows = csv_corpus(corpus, 16)  # 4 recordings per class: 3 in the train part, for 5 folds
    out = tmp_path / "shards"
    line = cli(capsys, "build", "--serial", "corpus.kind=csv", f"corpus.root={write_csv(corpus / 'l.csv', rows)}",
               f"out={out}", "snr_db=[]", "datasets=[ahsn]", "split.strategy=utterance", "split.test_fraction=0.25",
               "split.folds=5", "split.validation_fraction=0")
    assert re.fullmatch(r"serwild build: error: split\.folds=5 but class 'ang' of dataset 'ahsn' has only 3 "
                        r"unit\(s\) \(utterances\) in the train part: .*", line), line
    assert not list(out.rglob("*.tar")) and not (out / "manifest.json").exists()


# ----------------------------------------------------------------------------- 15. hostile config files


CONFIG_FILES = [  # (file bytes, what the one line must say besides the file's name)
    ("corpus:\n  root: caf\xe9\n".encode("latin-1"),
     r" is not UTF-8 text \(byte 19, line 2: b'\\xe9'\); save it as UTF-8$"),
    (b"seed: 1\nsplit: " + b"[" * 5000 + b"]" * 5000 + b"\n", r" line 2: nested more than 50 deep$"),
    (b"a: " + b"{b: " * 5000 + b"1" + b"}" * 5000 + b"\n", r" line 1: nested more than 50 deep$"),
    (b"seed: " + b"9" * 5000 + b"\n", r" line 1: the number is too long \(5000 characters\)$"),
    (b"seed: 1\nsplit:\n  folds: 2\n  folds: 3\n", r" line 4: the key 'folds' is given twice \(first on line 3\)$"),
    (b"seed: 1\nout: a\nseed: 2\n", r" line 3: the key 'seed' is given twice \(first on line 1\)$"),
    (b"x" * (2 * 1024 * 1024), r" is larger than 1 MiB: not a serwild config$"),
]


@pytest.mark.parametrize(("data", "expect"), CONFIG_FILES,
                         ids=["latin1", "deep-list", "deep-map", "long-int", "dup-nested", "dup-top", "huge"])
def test_a_hostile_config_file_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     data: bytes, expect: str) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(data)
    line = cli(capsys, "build", "--serial", "--config", str(cfg), f"out={tmp_path / 'shards'}")
    assert line.startswith(f"serwild build: error: config {cfg}") and re.search(expect, line), line
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("override", ["seed=" + "9" * 5000, "split=" + "[" * 5000 + "]" * 5000],
                         ids=["long-int", "deep"])
def test_a_hostile_override_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], override: str) -> None:
    line = cli(capsys, "build", "--serial", override)
    key = override.split("=", 1)[0]
    assert line.startswith(f"serwild build: error: override {key}=") and len(line) < 300, line


# ----------------------------------------------------------------------------- 16. a CSV field past the limit


def test_a_csv_field_past_the_csv_limit_is_one_line_naming_file_and_line(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    rows = csv_corpus(corpus, 8)
    rows.insert(3, f"{'a' * 200_000}.wav,ang,spk0,s0")
    listing = write_csv(corpus / "list.csv", rows)
    line = cli(capsys, "build", "--serial", "corpus.kind=csv", f"corpus.root={listing}", f"out={tmp_path / 'shards'}",
               "snr_db=[]", "datasets=[ahsn]", "split.folds=2")
    assert line.startswith(f"serwild build: error: {listing} line 5: a field longer than {csv.field_size_limit()} "
                           "characters"), line
    assert len(line) < 400


# ----------------------------------------------------------------------------- 19, 20. Ray builds


@pytest.fixture(scope="module")
def ray_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV corpus of 24 recordings and a noise folder, for the Ray builds."""
    base = tmp_path_factory.mktemp("ray_corpus")
    write_csv(base / "corpus" / "list.csv", csv_corpus(base / "corpus", 24, seconds=3.0))
    make_noise(base / "noise", seconds=4.0)
    return base


def ray_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["corpus.kind=csv", f"corpus.root={corpus / 'corpus' / 'list.csv'}", f"noise.dir={corpus / 'noise'}",
            f"out={out}", "datasets=[ahsn]", "split.folds=2", "snr_db=[15]", *extra]


def _without_ray_tmpdir(tmp: Path) -> dict[str, str]:
    return {k: v for k, v in procs.env(TMPDIR=str(tmp)).items() if k != "RAY_TMPDIR"}


@pytest.mark.slow
def test_a_full_disk_ray_build_under_load_leaves_no_temp_shard(ray_corpus: Path, tmp_path: Path) -> None:
    """Several workers write shards at once onto a 300 KB file system while the CPUs are busy
    (four Ray workers on this machine's two cores, beside the rest of the suite: a load of 5 or
    more, where this once failed): when the first fails, the others are mid-write. After the
    driver exits, no temp of any of them is left, nor anything of Ray's in TMPDIR."""
    with full_disk(tmp_path / "disk", "300k") as (disk, limit), short_temp_folder() as tmp:
        out = disk / "shards"  # a long path: Ray's session folder goes to a short folder in TMPDIR
        proc = subprocess.run([*SERWILD, "build", *ray_args(ray_corpus, out, "ray.num_cpus=4", "shard.max_samples=4")],
                              capture_output=True, text=True, env=_without_ray_tmpdir(tmp), timeout=300,
                              preexec_fn=limit, cwd=procs.REPO)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert re.fullmatch(rf"serwild build: error: no space left on device writing {re.escape(str(out))}/\S+",
                            one_line(proc.stderr, proc.returncode, 1))
        left = [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert left == [] and not (out / "manifest.json").exists(), left
        nothing_left(tmp, out)


def test_a_build_into_a_bucket_is_refused_with_the_publish_command(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    said = cli(capsys, "build", "out=s3://bucket/serwild/demo", f"corpus.root={tmp_path / 'nothing'}")
    assert "serwild publish <folder> s3://bucket/serwild/demo" in said
    assert not any(tmp_path.iterdir()) and not Path("s3:").exists()  # nothing written, not even a folder "s3:"


@pytest.mark.parametrize("what", ["file", "broken-link"])
def test_an_out_that_is_not_a_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 what: str) -> None:
    """out= a file, or a link to nothing (a scratch disk not mounted): refused, the file left as it was."""
    corpus = tmp_path / "corpus"
    listing = write_csv(corpus / "list.csv", csv_corpus(corpus, 8))
    out = tmp_path / "shards"
    if what == "file":
        out.write_text("mine")
    else:
        out.symlink_to(tmp_path / "unmounted" / "shards")
    line = cli(capsys, "build", "--serial", "corpus.kind=csv", f"corpus.root={listing}", f"out={out}", "snr_db=[]",
               "datasets=[ahsn]", "split.folds=2")
    why = f"{out} is not a folder" if what == "file" else f"{out} is a link to nothing (a disk not mounted?)"
    assert line == f"serwild build: error: the build folder {out} cannot be written ({why}): set out= to a writable " \
                   "folder", line
    assert (out.read_text() == "mine") if what == "file" else not (tmp_path / "unmounted").exists()
