"""`serwild predict` on generated recordings: shapes, messages, exit status, and the same
rendering as the builder's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serwild.builder.plan import SampleSpec
from serwild.builder.shards import render_sample
from serwild.cli import main
from serwild.data.loaders import decode_png
from serwild.data.transforms import image_transform
from serwild.deploy.predict import Predictor

CLASSES = ["ang", "hap", "sad", "neu"]


def speechlike(seconds: float, sr: int, f0: float = 180.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (0.3 * y / np.max(np.abs(y)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wavs")
    files = {k: d / f"{k}.wav" for k in ("mono16k", "stereo44k", "short", "silent", "gap", "short_silent")}
    sf.write(files["mono16k"], speechlike(2.5, 16000), 16000, subtype="PCM_16")  # 2 blocks + dropped tail
    left, right = speechlike(3.2, 44100, 220.0, 1), speechlike(3.2, 44100, 150.0, 2)
    sf.write(files["stereo44k"], np.stack([left, right], axis=1), 44100, subtype="PCM_24")  # 3 blocks
    sf.write(files["short"], speechlike(0.5, 16000), 16000)
    sf.write(files["silent"], np.zeros(32000, np.float32), 16000)
    sf.write(files["short_silent"], np.zeros(4000, np.float32), 16000)
    gap = speechlike(3.0, 16000)
    gap[16000:32000] = 0.0  # block 1 is digital silence
    sf.write(files["gap"], gap, 16000)
    files["text"] = d / "notes.wav"
    files["text"].write_text("this is not audio\n")
    return files


def _run_json(capsys: pytest.CaptureFixture[str], ckpt: Path, paths: list[Path]) -> tuple[int, dict, str]:
    rc = main(["predict", "--checkpoint", str(ckpt), *map(str, paths), "--json"])
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


def test_predict_json_shapes_and_messages(build_and_checkpoint: tuple[Path, Path], wavs: dict[str, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = build_and_checkpoint
    order = ["mono16k", "short", "stereo44k", "silent", "text", "gap", "short_silent"]
    rc, data, err = _run_json(capsys, ckpt, [wavs[k] for k in order])
    assert rc == 1  # some files failed, the others were still scored
    assert data["classes"] == CLASSES
    res = dict(zip(order, data["files"]))
    assert [r["file"] for r in data["files"]] == [str(wavs[k]) for k in order]
    for key, n_blocks, sr, ch in (("mono16k", 2, 16000, 1), ("stereo44k", 3, 44100, 2), ("gap", 2, 16000, 1),
                                  ("short", 1, 16000, 1)):
        r = res[key]
        assert r["error"] is None and (r["sample_rate"], r["channels"]) == (sr, ch)
        assert len(r["blocks"]) == n_blocks
        for b in r["blocks"]:
            assert list(b["probs"]) == CLASSES and sum(b["probs"].values()) == pytest.approx(1.0, abs=1e-3)
            assert b["label"] == max(b["probs"], key=b["probs"].get)
        assert r["label"] in CLASSES and sum(r["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [b["block"] for b in res["gap"]["blocks"]] == [0, 2] and res["gap"]["skipped_blocks"] == [1]
    assert [b["start_s"] for b in res["stereo44k"]["blocks"]] == [0.0, 1.0, 2.0]
    # a recording under one block ("No!") is padded with silence to one block, scored, and says so
    assert res["short"]["padded_s"] == 0.5 and res["short"]["tail_s"] == 0.0 and res["short"]["duration_s"] == 0.5
    assert all(res[k]["padded_s"] == 0.0 for k in ("mono16k", "stereo44k", "gap"))
    assert res["silent"]["error"].startswith("silent")
    assert res["short_silent"]["error"].startswith("silent")
    assert res["text"]["error"].startswith("not readable audio")
    for k in ("short_silent", "silent", "text"):
        assert res[k]["blocks"] == [] and res[k]["label"] is None
        assert f"{wavs[k]}: {res[k]['error']}" in err


def test_predict_table_and_exit_zero(build_and_checkpoint: tuple[Path, Path], wavs: dict[str, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = build_and_checkpoint
    assert main(["predict", "--checkpoint", str(ckpt), str(wavs["stereo44k"])]) == 0
    out = capsys.readouterr().out
    assert "44100 Hz, 2 ch" in out and "3 block(s) scored" in out
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.strip().startswith("block"))
    assert header.split() == ["block", "start_s", *CLASSES, "label"]
    rows = [ln.split() for ln in lines if ln.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert all(r[-1] in CLASSES and sum(map(float, r[2:6])) == pytest.approx(1.0, abs=0.02) for r in rows)
    assert any("(mean of block logits)" in ln for ln in lines)
    assert main(["predict", "--checkpoint", str(ckpt.parent / "nope.pt"), str(wavs["mono16k"])]) == 2


def test_predict_renders_exactly_like_the_builder(build_and_checkpoint: tuple[Path, Path],
                                                   wavs: dict[str, Path]) -> None:
    """A 44.1 kHz stereo file's block 1 through the builder's own render_sample, decoded
    as the trainer decodes shards, is the very tensor predict feeds the model."""
    _, ckpt = build_and_checkpoint
    predictor = Predictor(ckpt, device="cpu")
    res = predictor.open(wavs["stereo44k"])
    batches = list(predictor.batches(res, batch_size=2))  # rendered a batch at a time
    assert [b.shape[0] for b in batches] == [2, 1]
    x = torch.cat(batches)
    assert x.shape == (3, 3, 256, 256) and x.dtype == torch.float32
    path = str(wavs["stereo44k"])
    spec = SampleSpec(key="rec_b001_clean", dataset="ahsn", label="ang", class_index=0, utterance="rec",
                      speaker="x", session="x", path=path, source="stereo44k.wav", native_sr=44100, block=1,
                      condition="clean", snr_db=None, noise=None, noise_path=None, noise_offset=None,
                      split="test", fold=None)
    png, _ = render_sample(spec, predictor.renderer)
    assert torch.equal(image_transform(decode_png(png)), x[1])


def test_short_recording_is_padded_like_a_kept_tail(build_and_checkpoint: tuple[Path, Path], wavs: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A 0.5 s file is one block: its audio resampled and padded with zeros, as the builder pads a
    kept tail (audio.keep_tail), and the table says it was padded."""
    from serwild.builder import audio

    _, ckpt = build_and_checkpoint
    predictor = Predictor(ckpt, device="cpu")
    res, rec = predictor.open_file(wavs["short"])
    assert [b["block"] for b in res.blocks] == [0] and res.padded_s == 0.5
    y = predictor.waveform(res, rec, 0)
    assert np.array_equal(y, audio.read_block(wavs["short"], 0, 16000, 1.0, 16000))
    assert len(y) == 16000 and not y[8000:].any()
    assert main(["predict", "--checkpoint", str(ckpt), str(wavs["short"])]) == 0
    assert "shorter than one block: padded with 0.50 s of silence" in capsys.readouterr().out
