"""serwild serve in a real browser: Debian's Chromium driven by Playwright, with a fake
microphone fed from a WAV file, shows block for block the labels ``predict`` gives that file.

Exact, not approximate: Chromium's fake capture device runs at 44.1 kHz and passes a 32-bit
float WAV at that rate through unchanged (a 16-bit file would be scaled by 1/32767 on the
positive side, a 48 kHz one resampled), and the page, opened with ``?start=sound``, streams
from the file's first sample above -80 dBFS, so the page's blocks are the file's blocks. The
same page then plays an uploaded file through the same path (the file's own rate: no
resampling) and must show that file's labels too. Each band's probabilities (its title) are
compared with predict's as well.

Skips only where the browser is missing: no /usr/bin/chromium, or no playwright package.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serwild.deploy.predict import Predictor

from .conftest import sound, start_serve

CHROMIUM = Path("/usr/bin/chromium")
FAKE_RATE = 44100  # Chromium's fake capture device's rate
pytestmark = pytest.mark.slow

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; make setup does it as root)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (the dev extra)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    """``serwild serve`` on 127.0.0.1 (a free port), stopped at the end: its base URL."""
    proc, base = start_serve(model_dir)
    try:
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bands(page: object, n: int) -> list[tuple[float, str, str]]:
    """The first ``n`` bands of the timeline, once there: (start, label, title)."""
    page.wait_for_function(f"document.querySelectorAll('#track .band').length >= {n}", timeout=30_000)  # type: ignore[attr-defined]
    got = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#track .band", "els => els.map(e => [Number(e.dataset.start), e.dataset.label, e.title])")
    return [tuple(x) for x in got[:n]]


def predicted(model: Predictor, wav: Path) -> list[tuple[float, str, dict[str, float]]]:
    """predict's blocks as the page shows them: start, label, and the probabilities."""
    res = model.predict_file(wav)
    assert res.error is None and not res.skipped_blocks
    return [(b["start_s"], b["label"], dict(b["probs"])) for b in res.blocks]


def same(page_bands: list[tuple[float, str, str]], want: list[tuple[float, str, dict[str, float]]]) -> None:
    """The same blocks and labels, and each probability as the title shows it (two decimals). The
    page scores a block alone and predict in batches: the sums differ in the last float bits, which
    can round a value near an edge to the other hundredth (0.99 for 0.99496…, 1.00 for 0.99504…),
    so the shown value is within half a hundredth, and a hair, of predict's."""
    assert [(s, lab) for s, lab, _ in page_bands] == [(s, lab) for s, lab, _ in want]
    for (_, _, title), (_, _, probs) in zip(page_bands, want):
        shown = {c: float(p) for c, p in (part.split() for part in title.split(": ", 1)[1].split(" · ")[:len(probs)])}
        assert shown.keys() == probs.keys() and all(abs(shown[c] - p) <= 0.0051 for c, p in probs.items()), (
            title, probs)


def test_the_timeline_shows_predicts_labels(server: str, model_dir: Path, tmp_path: Path) -> None:
    model = Predictor(model_dir, "cpu")
    rng = np.random.default_rng(7)
    speech = sound(list(rng.permutation(4)), FAKE_RATE)  # four blocks, each a different sound
    speech[0] = 0.25  # a first sample well above the page's -80 dBFS start line
    ref = tmp_path / "speech.wav"
    sf.write(ref, speech, FAKE_RATE, subtype="FLOAT")
    gap = np.zeros(int(0.3 * FAKE_RATE), np.float32)
    mic = tmp_path / "mic.wav"  # what the fake microphone loops: silence, the speech, silence
    sf.write(mic, np.concatenate([gap, speech, gap]), FAKE_RATE, subtype="FLOAT")
    upload = tmp_path / "upload.wav"
    sf.write(upload, sound(list(rng.permutation(4))[:3], 22050), 22050, subtype="FLOAT")
    want_mic, want_upload = predicted(model, ref), predicted(model, upload)
    assert len({lab for _, lab, _ in want_mic}) > 1  # a timeline of one colour would prove little

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                     args=[*ARGS, f"--use-file-for-fake-audio-capture={mic}"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "?start=sound")
            page.wait_for_function("document.querySelectorAll('#legend span').length > 0", timeout=30_000)
            page.click("#mic")
            same(bands(page, len(want_mic)), want_mic)
            assert page.get_attribute("#running", "data-label") in model.classes
            page.click("#stop")
            page.wait_for_selector("#mic:not([disabled])", timeout=30_000)

            page.set_input_files("#file", str(upload))  # the same path: played, tapped, streamed
            page.wait_for_selector('#status[data-state="done"]', timeout=30_000)
            same(bands(page, len(want_upload)), want_upload)
            assert page.locator("#track .band").count() == len(want_upload)  # the tail under a block: none
            assert errors == []
        finally:
            browser.close()
