"""Hostile inputs (issue 8, inputs part): every one is a clear, one-line refusal or a listed reject.

Real bad files (a WAV whose header claims 1 Hz, a Latin-1 CSV, a manifest naming
``../../etc/passwd``, a shard with a relabelled block), real builds (serial, tiny corpora),
a real Ray worker that dies, real ``serwild`` processes. Each case asserts the exit status,
that the message is ONE line naming the file/shard/key/config key, and that no traceback
is printed; for builds, that nothing is lost (every input is in the shards or in
rejects.jsonl with a reason, never both) and that the build passes its own verify.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import soundfile as sf
import webdataset as wds

from serwild.builder import audio
from serwild.builder.build import run_build
from serwild.builder.config import AudioConfig
from serwild.builder.corpus import Utterance, read_csv_list
from serwild.builder.plan import plan_shards
from serwild.builder.render import Renderer
from serwild.builder.scan import ScannedUtterance
from serwild.cli import main
from serwild.config import load_config
from serwild.data.build import open_build
from serwild.errors import UsageError
from tests.builder.conftest import make_noise, tone
from tests.builder.test_bad_inputs import four_blocks, rate_1hz, rate_500k
from tests.evaluate.conftest import write_build, write_checkpoint
from tests.faults.procs import one_line

SR = 16000
REPO = Path(__file__).resolve().parents[2]


def cli(capsys: pytest.CaptureFixture[str], argv: list[str], expect_rc: int, *needles: str) -> str:
    rc = main(argv)
    return one_line(capsys.readouterr().err, rc, expect_rc, *needles)


def serwild(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``serwild …`` as a real process (exit status and the whole of stderr as the user sees them)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "serwild", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def read_rejects(build: Path) -> list[dict]:
    return [json.loads(line) for line in (build / "rejects.jsonl").read_text().splitlines()]


def read_samples(build: Path) -> list[dict]:
    manifest = json.loads((build / "manifest.json").read_text())
    urls = [str(build / s["path"]) for s in manifest["shards"]]
    return [{**json.loads(s["json"]), "__key__": s["__key__"]}
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


# ----------------------------------------------------------------------------- 1. unbounded work from tiny inputs
# (the matrix of bad inputs through one build is tests/builder/test_bad_inputs.py)


def test_probe_and_scan_bound_the_work_a_header_can_ask_for(tmp_path: Path) -> None:
    rate_1hz(tmp_path / "r1.wav")
    rate_500k(tmp_path / "r500k.wav")
    four_blocks(tmp_path / "long.wav")
    for name, reason in (("r1.wav", "below 4000 Hz"), ("r500k.wav", "above 384000 Hz")):
        with pytest.raises(audio.AudioError, match=reason):
            audio.probe(tmp_path / name)
        with pytest.raises(audio.AudioError, match=reason):
            audio.read_mono(tmp_path / name)  # the noise path reads whole files: the same bounds
    cfg = AudioConfig(max_blocks_per_file=3)
    with pytest.raises(audio.AudioError, match=r"4 blocks"):
        Renderer(cfg).scan(tmp_path / "long.wav")
    found = Renderer(cfg).scan(tmp_path / "long.wav", truncate=True)
    assert found.usable == (0, 1, 2) and found.dropped == 1


def _checkpoint_with(tmp_path: Path, **audio_over: object) -> Path:
    import torch  # here: only the predict tests need it

    from serwild.processes.checkpoint import Checkpoint, save_checkpoint

    build = write_build(tmp_path / "shards", {"clean": (None, [2]), "snr15": (15.0, [2])})
    path = write_checkpoint(tmp_path / "run" / "best.pt", build)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["config"]["audio"].update(audio_over)
    save_checkpoint(path, Checkpoint.from_dict(ckpt))
    return path


def test_predict_refuses_a_1hz_header_and_scores_only_the_first_blocks_of_a_long_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint_with(tmp_path, max_blocks_per_file=3)
    rate_1hz(tmp_path / "one_hz.wav")
    four_blocks(tmp_path / "long.wav")
    cli(capsys, ["predict", "--checkpoint", str(ckpt), str(tmp_path / "one_hz.wav"), "eval.device=cpu"], 1,
        "one_hz.wav", "sample rate 1 Hz is below 4000 Hz")
    rc = main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "long.wav"), "eval.device=cpu", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)["files"][0]
    assert [b["block"] for b in res["blocks"]] == [0, 1, 2] and res["dropped_blocks"] == 1
    main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "long.wav"), "eval.device=cpu"])
    out, _ = capsys.readouterr()
    assert "only the first 3 blocks scored (audio.max_blocks_per_file), 1 more not scored" in out


# ----------------------------------------------------------------------------- 2. duplicate inputs


def _csv_corpus(root: Path, encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True)
    rows = []
    labels = ["ang", "hap", "sad", "neu"]
    for i in range(12):
        sf.write(root / f"u{i:02d}.wav", tone(2.4, 150.0 + 20 * i, seed=i), SR, subtype="PCM_16")
        rows.append(f"u{i:02d}.wav,{labels[i % 4]},spk{i % 3},s{i % 3}\n")
    rows += ["u00.wav,ang,spk0,s0\n", "u00.wav,ang,spk0,s0\n",  # the same row three times in all
             "./sub/../u01.wav,hap,spk1,s1\n"]  # another spelling of u01.wav's path
    (root / "list.csv").write_text("path,label,speaker,session\n" + "".join(rows), encoding=encoding)
    return root / "list.csv"


def test_csv_duplicates_are_rejected_and_the_build_verifies(tmp_path: Path) -> None:
    csv_path = _csv_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "sub").mkdir()
    cfg = load_config(None, ["corpus.kind=csv", f"corpus.root={csv_path}", f"out={tmp_path / 'shards'}",
                             "snr_db=[]", "datasets=[ahsn]", "split.folds=2", "shard.max_samples=10"])
    build = run_build(cfg, executor="serial")
    dups = sorted((r["item"], r["reason"]) for r in read_rejects(build))
    assert [d[0] for d in dups] == ["list.csv:14", "list.csv:15", "list.csv:16"], dups
    assert all("duplicate of list.csv:2" in d[1] for d in dups[:2]) and "duplicate of list.csv:3" in dups[2][1]
    samples = read_samples(build)
    assert len({s["__key__"] for s in samples}) == len(samples)
    assert {s["utterance"] for s in samples} == {f"u{i:02d}" for i in range(12)}
    per_block = defaultdict(set)
    for s in samples:
        per_block[(s["utterance"], s["block"])].add(s["split"])
    assert all(len(v) == 1 for v in per_block.values())
    assert open_build(build).verify() == []


def test_plan_refuses_two_samples_with_one_key(tmp_path: Path) -> None:
    cfg = load_config(None, ["snr_db=[]", "datasets=[ahsn]", "split.folds=2", "split.strategy=utterance"])
    # ten of each class: every class gets a test sample
    scanned = [ScannedUtterance(Utterance(f"u{i}", str(tmp_path / f"u{i}.wav"), f"u{i}.wav", lab, "s", "s"), SR,
                                (0, 1)) for i, lab in enumerate(["ang", "hap", "sad", "neu"] * 10)]
    scanned.append(ScannedUtterance(Utterance("u0", str(tmp_path / "other.wav"), "other.wav", "ang", "s", "s"), SR,
                                    (0,)))
    with pytest.raises(UsageError, match=r"two samples share the key 'u0_b000_clean'.*other\.wav"):
        plan_shards(scanned, [], cfg)


# ----------------------------------------------------------------------------- 3. non-finite and duplicate config


@pytest.mark.parametrize(("override", "needles"), [
    ("audio.top_db=.nan", ("'audio.top_db'", "finite")),
    ("snr_db=[.nan]", ("'snr_db[0]'", "finite")),
    ("snr_db=[15, -.inf]", ("'snr_db[1]'", "finite")),
    ("train.lr=.inf", ("'train.lr'", "finite")),
    ("snr_db=[15, 15]", ("'snr_db'", "15.0", "more than once")),
    ("datasets=[ahsn, aesn, ahsn]", ("'datasets'", "ahsn", "more than once")),
    ("train.conditions=[clean, clean]", ("'train.conditions'", "clean", "more than once")),
    ("train.name=..", ("'train.name'", "one folder name inside train.run_dir")),
    ("train.name=.", ("'train.name'", "one folder name inside train.run_dir")),
    ("train.name=/tmp/elsewhere", ("'train.name'", "'/tmp/elsewhere'")),
    ("train.name=a/../../b", ("'train.name'", "one folder name")),
])
def test_config_refuses_non_finite_and_repeated_values(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       override: str, needles: tuple[str, ...]) -> None:
    # A corpus that would fail later (no such CSV) in case the bad value were let through.
    cli(capsys, ["build", "--serial", f"out={tmp_path / 'shards'}", "corpus.kind=csv",
                 f"corpus.root={tmp_path / 'none.csv'}", override], 2, "serwild build: error:", *needles)
    assert not (tmp_path / "shards").exists()


def test_shipped_configs_still_load() -> None:
    for p in sorted((REPO / "configs").glob("*.yaml")):
        load_config(p)


# ----------------------------------------------------------------------------- 4. manifests


@pytest.fixture
def hand_build(tmp_path: Path) -> Path:
    return write_build(tmp_path / "shards", {"clean": (None, [3, 2]), "snr15": (15.0, [3])})


def _edit_manifest(build: Path, fn) -> None:
    m = json.loads((build / "manifest.json").read_text())
    fn(m)
    (build / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda m: m["shards"][0].pop("sha256"), ("shard record 0", "sha256")),
    (lambda m: m["shards"][1].update(count="3"), ("shard record 1", "count")),
    (lambda m: m["shards"][1].pop("split"), ("shard record 1", "'split'")),
    (lambda m: m["shards"][1].update(fold="0"), ("shard record 1", "'fold'")),
    (lambda m: m["shards"][0].update(path="../../etc/passwd"), ("shard record 0", "'../../etc/passwd'")),
    (lambda m: m["shards"][2].update(path="/etc/passwd"), ("shard record 2", "'/etc/passwd'")),
    (lambda m: m.update(shards={"a": 1}), ("'shards'", "list")),
    (lambda m: m.pop("datasets"), ("'datasets'",)),
    (lambda m: m["shards"][0].update(condition="snr99"), ("shard record 0", "snr99")),
    (lambda m: m["shards"].append(dict(m["shards"][0])), ("shard record 3 lists", "again (first as record 0)")),
    (lambda m: m["datasets"]["ahsn"].update(classes=[f"c{i}" for i in range(300_000)]),
     ("datasets.ahsn.classes must list 2..1000 class names, got 300000",)),
], ids=["no-sha256", "count-str", "no-split", "fold-str", "dotdot", "absolute", "shards-dict", "no-datasets",
        "unknown-condition", "listed-twice", "300k-classes"])
def test_verify_refuses_a_malformed_manifest_in_one_line(hand_build: Path, capsys: pytest.CaptureFixture[str],
                                                         edit, needles: tuple[str, ...]) -> None:
    _edit_manifest(hand_build, edit)
    cli(capsys, ["verify", str(hand_build)], 2, "manifest.json", *needles)


def test_evaluate_never_reads_outside_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = write_build(tmp_path / "shards", {"clean": (None, [3]), "snr15": (15.0, [3])})
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", build)
    _edit_manifest(build, lambda m: m["shards"][0].update(path="../../../../../../etc/passwd"))
    cli(capsys, ["evaluate", "--checkpoint", str(ckpt), "--shards", str(build), "eval.device=cpu"], 2,
        "serwild evaluate: error:", "etc/passwd", "refusing path")


# ----------------------------------------------------------------------------- 5. messages


def test_csv_with_a_bom_reads(tmp_path: Path) -> None:
    csv_path = _csv_corpus(tmp_path / "c", encoding="utf-8-sig")
    utts, rejects = read_csv_list(csv_path)
    assert len(utts) == 12 and len(rejects) == 3


def test_latin1_csv_is_one_line_naming_file_and_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = _csv_corpus(tmp_path / "c")
    csv_path.write_bytes(csv_path.read_bytes() + "u02.wav,sad,José,s0\n".encode("latin-1"))  # one Latin-1 row
    make_noise(tmp_path / "noise", seconds=4.0)
    offset = csv_path.read_bytes().index(b"\xe9")
    cli(capsys, ["build", "--serial", "corpus.kind=csv", f"corpus.root={csv_path}", f"noise.dir={tmp_path / 'noise'}",
                 f"out={tmp_path / 'shards'}"], 2, str(csv_path), f"byte {offset}", "UTF-8")


def _crash(*args: object) -> None:
    os._exit(3)  # a worker that dies (segfault, OOM kill): Ray retries it, then gives up


def test_ray_gives_up_naming_the_shard_and_its_first_input(tmp_path: Path) -> None:
    import ray
    from ray import cloudpickle

    from serwild.builder.build import describe_task
    from serwild.processes import executors

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import tests/
    cfg = load_config(None, ["ray.num_cpus=1", f"out={tmp_path}"])
    scanned = [ScannedUtterance(Utterance(f"u{i}", str(tmp_path / f"input{i}.wav"), f"input{i}.wav", lab, "s", "s"),
                                SR, (0,)) for i, lab in enumerate(["ang", "hap", "sad", "neu"] * 10)]
    spec = plan_shards(scanned, [], load_config(None, ["snr_db=[]", "datasets=[ahsn]", "split.folds=2",
                                                       "split.strategy=utterance"]))[0]
    first = spec.samples[0].path
    try:
        with executors.open_executor("ray", cfg.ray, tmp_path) as ex, pytest.raises(UsageError) as e:
            list(ex.map(_crash, [(spec, str(tmp_path), cfg.audio)], "build shards", describe_task))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if ray.is_initialized():
            ray.shutdown()
    msg = str(e.value)
    assert "\n" not in msg and spec.path in msg and first in msg and "retries" in msg, msg


def _relabel(shard: Path, key: str, new: int) -> None:
    """Rewrite one block's class_index in place (same byte count, so only sha256 could tell)."""
    data = shard.read_bytes()
    at = data.index(f"{key}.json".encode())
    field = data.index(b'"class_index": ', at) + len(b'"class_index": ')
    shard.write_bytes(data[:field] + str(new).encode() + data[field + 1:])


@pytest.mark.parametrize(("new", "needles", "process"), [
    (7, ("Ses01F_impro01_F000_b000_clean", "clean-000000.tar", "class_index 7"), False),
    (1, ("Ses01F_impro01_F000_b000_clean", "at class_index 1, where the manifest names", "clean-000000.tar"), True),
], ids=["out-of-range", "utterance-disagrees"])
def test_evaluate_no_sha256_mislabelled_block_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          new: int, needles: tuple[str, ...], process: bool) -> None:
    build = write_build(tmp_path / "shards", {"clean": (None, [5]), "snr15": (15.0, [2])})
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", build)
    _relabel(build / "ahsn/test/clean-000000.tar", "Ses01F_impro01_F000_b000_clean", new)
    argv = ["evaluate", "--checkpoint", str(ckpt), "--shards", str(build), "--no-sha256", "eval.device=cpu",
            "eval.num_workers=0"]
    if process:  # the whole of what a user sees, from a real `serwild` process
        p = serwild(*argv)
        one_line(p.stderr, p.returncode, 2, "serwild evaluate: error:", *needles)
    else:
        cli(capsys, argv, 2, "serwild evaluate: error:", *needles)
    assert not (tmp_path / "run" / "report" / "metrics.json").exists()


# ----------------------------------------------------------------------------- 5. output folders that cannot be written


@pytest.mark.parametrize("where", ["read-only", "proc"])
def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 where: str) -> None:
    """``evaluate --out``, ``export --out`` and ``build out=`` on a read-only file system (checked
    before a test set is scored or a corpus read), or under /proc (refused by the kernel at the
    first write): one line each, no traceback."""
    from tests.faults.test_training import read_only

    build = write_build(tmp_path / "shards", {"clean": (None, [3])})
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", build)
    with read_only(tmp_path / "ro") if where == "read-only" else contextlib.nullcontext(Path("/proc")) as base:
        out = base / "serwild-out"
        for argv, rc, needle in (
                (["evaluate", "--checkpoint", str(ckpt), "--out", str(out), "eval.device=cpu", "eval.num_workers=0",
                  "eval.bootstrap=0"], 2, "serwild evaluate: error: "),
                (["export", str(ckpt), "--out", str(out)], 2, "serwild export: error: "),
                (["build", "--serial", f"out={out}", "corpus.kind=csv", f"corpus.root={tmp_path / 'none.csv'}"], 2,
                 "serwild build: error: ")):
            got = main(argv)
            # Under /proc the build's first write comes after its corpus is read: that one line then.
            named = () if where == "proc" and argv[0] == "build" else (str(out),)
            line = one_line(capsys.readouterr().err, got, rc, needle, *named)
            if where == "read-only":
                assert "cannot be written (read-only file system" in line, line
        assert not out.exists()
