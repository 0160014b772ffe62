"""What the serve tests share: a small model whose labels follow the audio, and recordings
whose blocks it labels differently.

The model is tests/evaluate's tiny network (random convolutions) with its last layer fitted in
closed form (least squares on its own features) so that each of four kinds of sound gets its own
class: a random model gives nearly every block the same label, and a timeline of one colour would
prove little. It takes a second; nothing is trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from serwild.builder import audio
from serwild.data.transforms import image_transform
from serwild.deploy.predict import Predictor
from serwild.processes.checkpoint import load_checkpoint, save_checkpoint
from tests.deploy.test_predict import speechlike
from tests.evaluate.conftest import write_build, write_checkpoint


def _tone(f0: float) -> Callable[[int, int], np.ndarray]:
    return lambda n, sr: speechlike(n / sr, sr, f0, int(f0))


def _noise(n: int, sr: int) -> np.ndarray:
    return (0.2 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)


def _chirp(n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    return (0.3 * np.sin(2 * np.pi * (200 + 2500 * (t % 1.0)) * t)).astype(np.float32)


KINDS: list[Callable[[int, int], np.ndarray]] = [_tone(110.0), _tone(330.0), _noise, _chirp]  # class k ← KINDS[k]


def sound(kinds: list[int], sr: int) -> np.ndarray:
    """One second of ``KINDS[k]`` per entry, end to end."""
    return np.concatenate([KINDS[k](sr, sr) for k in kinds]).astype(np.float32)


def _fit_head(ckpt_path: Path) -> None:
    model = Predictor(ckpt_path, "cpu")
    feats: list[torch.Tensor] = []
    hook = model.model.classifier[5].register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    a = model.renderer.cfg
    for k in range(len(KINDS)):
        for shift in range(3):  # a few cuts of each kind
            y = np.roll(sound([k, k], a.sample_rate), shift * 3001)[:a.sample_rate]
            with torch.inference_mode():
                model.model(image_transform(model.renderer.rgb(audio.resample(y, a.sample_rate, a.sample_rate,
                                                                              length=len(y)))).unsqueeze(0))
    hook.remove()
    x = torch.cat(feats).double()
    mu = x.mean(dim=0)
    y = torch.repeat_interleave(torch.eye(len(KINDS), dtype=torch.float64) * 2 - 1, 3, dim=0)
    w = torch.linalg.lstsq(x - mu, y, driver="gelsd").solution.T * 8.0  # ×8: margins of several logits
    ckpt = load_checkpoint(ckpt_path)
    ckpt.model["classifier.6.weight"] = w.float()
    ckpt.model["classifier.6.bias"] = (-(mu @ w.T)).float()
    save_checkpoint(ckpt_path, ckpt)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (its best.pt), as ``serwild serve --model`` takes it."""
    root = tmp_path_factory.mktemp("servefix")
    ckpt_path = write_checkpoint(root / "runs" / "demo-x" / "best.pt", write_build(root / "shards"), seed=3)
    _fit_head(ckpt_path)
    return ckpt_path.parent


def start_serve(model_dir: Path) -> tuple[subprocess.Popen, str]:
    """``serwild serve`` on 127.0.0.1 at a free port (no token): the process and its base URL,
    read from its first line. The caller stops it (SIGTERM) and waits for it."""
    proc = subprocess.Popen([sys.executable, "-m", "serwild", "serve", "--model", str(model_dir), "--port", "0",
                             "eval.device=cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SERWILD_TOKEN": ""})
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("serwild serve: http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(line + proc.communicate()[1])
    return proc, line.split()[2]
