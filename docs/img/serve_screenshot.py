"""Makes docs/img/serve.png: serwild serve's page after 14 s of a fake microphone.

    .venv/bin/python docs/img/serve_screenshot.py
    .venv/bin/python docs/img/serve_screenshot.py --model exports/demo-augmented --wav talk.wav

With ``--model`` and ``--wav``: that model, and that recording as the microphone (resampled to
Chromium's 44.1 kHz, float). Without: the serve tests' model (tests/serve/conftest.py: a tiny
random network whose last layer is fitted so that four kinds of sound get four classes) and a
file of those sounds with a silent second, which shows the page, not a trained model's reading.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.evaluate.conftest import write_build, write_checkpoint  # noqa: E402
from tests.serve.conftest import _fit_head, sound  # noqa: E402
from tests.serve.test_browser import ARGS, CHROMIUM  # noqa: E402

SECONDS = 14


def main() -> None:
    import argparse

    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an export or run folder (default: the serve tests' fitted tiny model)")
    ap.add_argument("--wav", help="the recording the fake microphone plays (with --model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model and args.wav:
            import librosa

            model_dir = Path(args.model)
            y, sr = sf.read(args.wav, dtype="float32", always_2d=True)
            y = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=44100).astype(np.float32)
            seconds = int(len(y) / 44100)
        else:
            ckpt = write_checkpoint(root / "runs" / "demo" / "best.pt", write_build(root / "shards"), seed=3)
            _fit_head(ckpt)
            model_dir, seconds = ckpt.parent, SECONDS
            y = sound([0, 0, 1, 3, 3, 3, 2, 1, 1, 0, 0, 3, 1, 1, 2, 2], 44100)
            y[5 * 44100:6 * 44100] = 0.0  # a pause: a silent band
        y[0] = 0.25  # the first sample is where ?start=sound starts: blocks fall where the file has them
        # silence first: the capture starts a few ms before the page listens, and ?start=sound then
        # starts at the file's first sample, not at whatever the page heard first
        sf.write(root / "mic.wav", np.concatenate([np.zeros(22050, np.float32), y]), 44100, subtype="FLOAT")
        proc = subprocess.Popen([sys.executable, "-m", "serwild", "serve", "--model", str(model_dir), "--port", "0",
                                 "eval.device=cpu"], stdout=subprocess.PIPE, text=True)
        try:
            url = proc.stdout.readline().split()[2]  # type: ignore[union-attr]
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM),
                                             args=[*ARGS, f"--use-file-for-fake-audio-capture={root / 'mic.wav'}"])
                page = browser.new_page(viewport={"width": 980, "height": 470})
                page.goto(url + "?start=sound")
                page.wait_for_function("document.querySelectorAll('#legend span').length > 0")
                page.click("#mic")
                page.wait_for_function(f"document.querySelectorAll('#track .band').length >= {seconds}",
                                       timeout=60_000)
                page.screenshot(path=str(root / "serve.png"))
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        out = REPO / "docs" / "img" / "serve.png"
        Image.open(root / "serve.png").convert("RGB").quantize(64).save(out, optimize=True)  # ~10x smaller
        print(f"{out}: {out.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
