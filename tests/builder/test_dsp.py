"""Blocks, SNR mixing, normalisation and the jet rendering."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from serwild.builder import audio, augment, render
from serwild.builder.config import AudioConfig


@pytest.mark.parametrize("snr", [15.0, 20.0, 40.0, 0.0, -5.0])
def test_mix_hits_the_target_snr(snr: float) -> None:
    rng = np.random.default_rng(1)
    clean = np.sin(np.linspace(0, 800, 16000)).astype(np.float32) * 0.3
    noise = rng.standard_normal(16000).astype(np.float32)
    y, lam = augment.mix_at_snr(clean, noise, snr)
    assert abs(augment.snr_db(clean, y - clean) - snr) < 0.1
    assert abs(augment.snr_db(clean, lam * noise) - snr) < 1e-3


def test_silent_block_does_not_divide_by_zero() -> None:
    y, lam = augment.mix_at_snr(np.zeros(100, np.float32), np.ones(100, np.float32), 15.0)
    assert lam == 0.0 and np.isfinite(y).all() and not y.any()
    assert not augment.peak_normalise(np.zeros(10, np.float32)).any()
    with pytest.raises(ValueError, match="silent"):
        augment.mix_at_snr(np.ones(100, np.float32), np.zeros(100, np.float32), 15.0)


def test_peak_normalise_is_infinity_norm() -> None:
    y = augment.peak_normalise(np.array([0.1, -0.4, 0.2], np.float32))
    assert np.max(np.abs(y)) == pytest.approx(1.0) and y[1] == pytest.approx(-1.0)


def test_render_is_257_by_259_jet_with_low_frequencies_at_the_bottom() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    low = np.sin(2 * np.pi * 300 * t).astype(np.float32)  # energy near the bottom rows
    rgb = np.asarray(Image.open(io.BytesIO(render.Renderer(AudioConfig()).png(low))).convert("RGB"))
    assert rgb.shape == (257, 259, 3) and rgb.dtype == np.uint8
    jet = render.palette("jet")
    # the hottest colour (dark red, index 255) sits at 300 Hz → row 257 - 1 - round(300 / 31.25)
    row_300hz = 256 - round(300 / (sr / 512))
    assert (rgb[row_300hz, 100] == jet[255]).all()
    assert (rgb[5, 100] != jet[255]).any()
    # decoded colours are exactly matplotlib's jet
    import matplotlib

    ref = np.rint(matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    assert np.array_equal(jet, ref)


def test_render_of_silence_is_finite_and_dark() -> None:
    db = render.power_db(np.zeros(16000, np.float32), 512, 62, 80.0)
    assert np.isfinite(db).all() and (db == -80.0).all()


def test_blocks_from_other_rates_and_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stereo = (0.2 * rng.standard_normal((int(2.5 * 44100), 2))).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 44100, subtype="PCM_24")
    info = audio.probe(tmp_path / "s.wav")
    assert (info.sample_rate, info.channels) == (44100, 2)
    assert audio.block_count(info, 1.0, keep_tail=False) == 2
    assert audio.block_count(info, 1.0, keep_tail=True) == 3
    y = audio.read_block(tmp_path / "s.wav", 1, 44100, 1.0, 16000)
    assert y.shape == (16000,) and y.dtype == np.float32
    tail = audio.read_block(tmp_path / "s.wav", 2, 44100, 1.0, 16000)
    assert tail.shape == (16000,) and not tail[9000:].any()  # zero-padded half block
