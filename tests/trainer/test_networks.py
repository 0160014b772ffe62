"""Any torchvision classifier of the short list by name (train.arch), from scratch: it builds with
a head sized from the view's classes, trains, and its checkpoint loads, exports (ONNX too) and predicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from serwild.config import ConfigError, load_config
from serwild.deploy.export import export_run
from serwild.deploy.predict import Predictor
from serwild.processes.checkpoint import TORCHVISION_ARCHS, load_checkpoint
from serwild.trainer.model import build_model
from serwild.trainer.train import main as train_main
from tests.builder.conftest import tone
from tests.trainer.conftest import tiny_build, tiny_config  # noqa: F401 (fixture)


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_each_network_builds_with_the_views_head(arch: str) -> None:
    model = build_model(6, "none", arch).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 256, 256)).shape == (2, 6)


def test_a_network_trains_exports_and_predicts(tiny_build: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_config(tiny_build, tmp_path, **{"train.name": "m", "train.arch": "mobilenet_v3_small",
                                                "train.epochs": 1, "cv.fold": None})
    train_main(cfg)
    ckpt = load_checkpoint(tmp_path / "m" / "best.pt")
    assert ckpt.arch == "mobilenet_v3_small" and ckpt.recipe["name"] == "scratch"
    out = export_run(tmp_path / "m", tmp_path / "x", onnx=True)  # checked against torch with onnxruntime
    assert (out / "model.onnx").is_file()
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(1.5, 180.0), 16000)
    res = Predictor.from_pretrained(out, device="cpu", verbose=False).predict_file(wav)
    assert res.error is None and res.label in ckpt.classes
    assert "mobilenet_v3_small" in (out / "README.md").read_text()


def test_the_papers_recipe_names_alexnets_layers() -> None:
    with pytest.raises(ConfigError, match="resnet18 trains from scratch"):
        load_config(None, ["train.arch=resnet18", "train.pretrained=none", "train.recipe=paper"])
    with pytest.raises(ConfigError, match="imagenet"):
        load_config(None, ["train.arch=resnet18", "train.pretrained=imagenet"])
