"""`serwild evaluate`: every test sample of every condition scored exactly once, in one
process and under a 2-process torchrun; bad shards and foreign checkpoints refused."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from serwild import __version__
from serwild.cli import main
from serwild.data.manifest import load_manifest
from serwild.data.records import ShardRecord
from serwild.data.transforms import image_transform, normalise
from serwild.errors import UsageError
from serwild.evaluate.config import EvalConfig
from serwild.evaluate.evaluate import check_build, evaluate_checkpoint, merge_parts
from serwild.evaluate.report import LOGITS_FILE, read_logits
from serwild.processes.checkpoint import load_checkpoint
from serwild.trainer.model import model_from_checkpoint
from serwild.trainer.outputs import model_outputs
from tests.evaluate.conftest import TEST_SHARDS


@pytest.fixture(scope="module")
def one_process(build_and_checkpoint: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, ckpt = build_and_checkpoint
    return evaluate_checkpoint(ckpt, out=tmp_path_factory.mktemp("report1"),
                               settings=EvalConfig(batch_size=8, num_workers=0))


def _predictions(report: Path) -> list[dict]:
    with (report / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


def test_one_process_report(one_process: Path, build_and_checkpoint: tuple[Path, Path]) -> None:
    build, _ = build_and_checkpoint
    m = json.loads((one_process / "metrics.json").read_text())
    assert list(m["conditions"]) == ["clean", "snr15", "snr40"]
    assert m["world_size"] == 1 and m["dataset"] == "ahsn" and m["sha256_checked"] is True
    assert m["protocol"]["train_conditions"] == ["clean", "snr15"] and m["protocol"]["pretrained"] == "none"
    assert m["protocol"]["split_strategy"] == "utterance" and m["protocol"]["recipe"]["optimizer"] == "adam"
    rows = _predictions(one_process)
    for cond, (snr, sizes) in TEST_SHARDS.items():
        c = m["conditions"][cond]
        assert c["snr_db"] == snr and c["samples"] == sum(sizes) == c["block"]["n"]
        mine = [r for r in rows if r["condition"] == cond]
        assert len(mine) == sum(sizes)
        assert len({(r["utterance"], r["block"]) for r in mine}) == sum(sizes)  # each sample once
        assert c["utterance"]["n"] == len({r["utterance"] for r in mine})
        assert sum(map(sum, c["block"]["confusion"])) == sum(sizes)
    md = (one_process / "report.md").read_text()
    assert "| 15 dB | 7 |" in md and "| 40 dB | 7 |" in md and "| clean | 9 |" in md
    for figure in ("confusion.png", "weighted_f1.png"):  # one confusion figure, a panel per condition
        assert (one_process / figure).is_file() and f"]({figure})" in md
    assert (one_process / "config.yaml").is_file()
    # what produced the numbers: budget, N per condition, versions (git: a revision or "unknown")
    v = m["versions"]
    assert v["serwild"] == __version__ and v["torch"] == torch.__version__ and v["git"]
    assert m["budget"]["epochs_done"] == 2 and m["budget"]["epochs"] == 6  # the fixture's checkpoint
    assert f"serwild {__version__} (git {v['git']}), torch {torch.__version__}" in md
    assert "**Training budget:** 2 of 6 epochs" in md
    assert "**Test set (N per condition):** clean 9 blocks / " in md


def test_scores_match_an_independent_reading(one_process: Path, build_and_checkpoint: tuple[Path, Path]) -> None:
    """Read the shards with plain webdataset, apply the shared transform, run the model:
    the evaluator's predictions must be these."""
    build, ckpt_path = build_and_checkpoint
    model = model_from_checkpoint(load_checkpoint(ckpt_path))
    manifest = load_manifest(build)
    urls = [str(build / s.path) for s in manifest.shards if s.condition == "snr40"]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "json")
    images, metas = zip(*ds)
    with torch.inference_mode():
        logits = model(torch.stack([image_transform(i) for i in images]))
    probs = torch.softmax(logits, dim=1).numpy()
    want = {(m["utterance"], str(m["block"])): p for m, p in zip(metas, probs)}
    got = {(r["utterance"], r["block"]): r for r in _predictions(one_process) if r["condition"] == "snr40"}
    assert set(got) == set(want)
    classes = manifest.classes("ahsn")
    for k, p in want.items():
        assert np.allclose([float(got[k][f"p_{c}"]) for c in classes], p, atol=2e-4)
    # logits.npz: the logits themselves, in predictions.csv's order (other batches: float32 rounding only)
    found, outputs = read_logits(one_process / LOGITS_FILE)
    assert found == classes and list(outputs) == ["clean", "snr15", "snr40"]
    exact = {(m["utterance"], m["block"]): z for m, z in zip(metas, logits.numpy())}
    stored = outputs["snr40"]
    keys = list(zip(stored["utterances"], stored["blocks"]))
    assert keys == sorted(exact) and [f"{u},{b}" for u, b in keys] == \
        [f"{r['utterance']},{r['block']}" for r in _predictions(one_process) if r["condition"] == "snr40"]
    np.testing.assert_allclose(stored["logits"], np.stack([exact[k] for k in keys]), rtol=1e-5, atol=1e-6)


def test_the_evaluation_loop_gives_exact_outputs_labels_and_keys() -> None:
    """One loop for validation, evaluate and the feature cache: uint8 batches are normalised on the
    way in, float ones go in as they are, outputs come back float32 and unrounded with their labels
    and keys in batch order, without gradients, and the model is left in eval mode."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 4 * 4, 5)).train()
    raw = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8)
    batches = [(raw[:4], torch.arange(4), ["a", "b", "c", "d"]), (normalise(raw[4:]), torch.tensor([4, 0, 1]),
                                                                  ["e", "f", "g"])]
    seen: list[int] = []
    out = model_outputs(model, batches, torch.device("cpu"), on_batch=seen.append)
    assert not model.training and seen == [4, 3]
    with torch.no_grad():  # the same batches, in eval mode (no dropout): the same numbers, bit for bit
        want = torch.cat([model(normalise(raw[:4])), model(normalise(raw[4:]))]).numpy()
    assert out.logits.dtype == np.float32 and np.array_equal(out.logits, want)
    assert out.labels.tolist() == [0, 1, 2, 3, 4, 0, 1] and out.keys == list("abcdefg")
    assert np.array_equal(out.preds, want.argmax(1))
    empty = model_outputs(model, [], torch.device("cpu"))  # a rank with no shard of a condition
    assert empty.logits.size == 0 and empty.preds.tolist() == [] and empty.keys == []


def test_two_process_torchrun_scores_each_sample_once(one_process: Path, build_and_checkpoint: tuple[Path, Path],
                                                      tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Odd sample counts, and snr15's single shard leaves rank 1 with nothing to read. This process
    is the launcher; torchrun and its two ranks are processes of their own."""
    _, ckpt = build_and_checkpoint
    out = tmp_path / "report2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--nproc", "2", "--out", str(out), "eval.batch_size=8",
               "eval.num_workers=0", "eval.device=cpu"])
    assert rc == 0, capfd.readouterr().err[-3000:]
    one = json.loads((one_process / "metrics.json").read_text())
    two = json.loads((out / "metrics.json").read_text())
    assert two["world_size"] == 2
    for cond in one["conditions"]:
        a, b = one["conditions"][cond], two["conditions"][cond]
        for unit in ("block", "utterance"):
            assert b[unit]["n"] == a[unit]["n"]
            assert b[unit]["confusion"] == a[unit]["confusion"]
            assert b[unit]["weighted"] == pytest.approx(a[unit]["weighted"])
    rows1, rows2 = _predictions(one_process), _predictions(out)
    assert [(r["condition"], r["utterance"], r["block"], r["predicted"]) for r in rows1] == \
        [(r["condition"], r["utterance"], r["block"], r["predicted"]) for r in rows2]


def _copy(build: Path, tmp_path: Path) -> Path:
    """A copy of the build to break (same manifest, so the checkpoint still matches it)."""
    return Path(shutil.copytree(build, tmp_path / "shards"))


def test_missing_test_shard_is_an_error_naming_it(build_and_checkpoint: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    build, ckpt = _copy(build_and_checkpoint[0], tmp_path), build_and_checkpoint[1]
    (build / "ahsn/test/snr40-000001.tar").unlink()
    with pytest.raises(UsageError, match=r"missing: ahsn/test/snr40-000001\.tar"):
        evaluate_checkpoint(ckpt, shards=build, out=tmp_path / "r", settings=EvalConfig(batch_size=8, num_workers=0))
    assert main(["evaluate", "--checkpoint", str(ckpt), "--shards", str(build), "--out", str(tmp_path / "r")]) == 2
    assert "snr40-000001.tar" in capsys.readouterr().err
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "same-size corruption"])
def test_damaged_test_shard_is_an_error_naming_it(build_and_checkpoint: tuple[Path, Path], tmp_path: Path,
                                                  damage: str) -> None:
    build, ckpt = _copy(build_and_checkpoint[0], tmp_path), build_and_checkpoint[1]
    shard = build / "ahsn/test/clean-000000.tar"
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
        why = "bytes"
    else:  # flip bytes inside a PNG: only the sha256 check can see it
        data[2000:2016] = bytes(255 - x for x in data[2000:2016])
        why = "sha256"
    shard.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=rf"clean-000000\.tar.*{why}"):
        evaluate_checkpoint(ckpt, shards=build, out=tmp_path / "r", settings=EvalConfig(batch_size=8, num_workers=0))


def test_sample_count_and_duplicates_checked_after_gathering() -> None:
    def part(utts: list[str], blocks: list[int]) -> dict:
        return {"logits": np.zeros((len(utts), 4), np.float32), "labels": np.zeros(len(utts), np.int64),
                "utterances": utts, "blocks": blocks}

    records = [ShardRecord("ahsn/test/clean-000000.tar", "ahsn", "test", None, "clean", 3, 0, "0" * 64)]
    merged = merge_parts([part(["b", "a"], [0, 0]), part(["a"], [1]), part([], [])], "clean", 3, records)
    assert list(zip(merged["utterances"], merged["blocks"])) == [("a", 0), ("a", 1), ("b", 0)]
    with pytest.raises(UsageError, match="manifest lists 4 in ahsn/test/clean-000000.tar"):
        merge_parts([part(["a", "b"], [0, 0]), part(["c"], [0])], "clean", 4, records)
    with pytest.raises(UsageError, match="more than once"):
        merge_parts([part(["a", "b"], [0, 0]), part(["a"], [0])], "clean", 3, records)
    with pytest.raises(UsageError, match="rank 1: shard x is short"):
        merge_parts([part(["a"], [0]), {"error": "rank 1: shard x is short"}], "clean", 2, records)


def test_refuses_a_checkpoint_from_another_build(build_and_checkpoint: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    build, ckpt_path = build_and_checkpoint
    manifest = load_manifest(build)
    ckpt = load_checkpoint(ckpt_path)
    check_build(ckpt, manifest, build, allow_other_build=False)  # its own build: fine
    other = replace(ckpt, manifest_fingerprint="0" * 64)
    with pytest.raises(UsageError, match="another build"):
        check_build(other, manifest, build, allow_other_build=False)
    check_build(other, manifest, build, allow_other_build=True)
    assert "warning" in capsys.readouterr().err
    with pytest.raises(UsageError, match="classes"):
        check_build(replace(ckpt, classes=["ang", "exc", "sad", "neu"]), manifest, build, allow_other_build=True)
    with pytest.raises(UsageError, match="aesn"):
        check_build(replace(ckpt, dataset="aesn"), manifest, build, allow_other_build=True)
