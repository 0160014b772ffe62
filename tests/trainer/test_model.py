"""Model, pretrained weights (offline), recipes and the frozen layers."""

from __future__ import annotations

import socket
import typing
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from serwild.errors import UsageError
from serwild.processes.checkpoint import ARCHS
from serwild.trainer import model as model_mod
from serwild.trainer.config import LAYERS, TrainConfig
from serwild.trainer.model import build_model, imagenet_cache_path, layer, new_model
from serwild.trainer.recipe import describe, make_optimizer, make_scheduler, resolve_recipe


def test_build_model_replaces_the_last_layer() -> None:
    m = build_model(4).eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 256, 256)).shape == (2, 4)
    assert layer(m, "fc8").out_features == 4 and layer(m, "conv5").out_channels == 256


def test_pretrained_file_loads_all_but_the_head(alexnet_weights_file: Path) -> None:
    state = torch.load(alexnet_weights_file, weights_only=True)
    m = build_model(4, str(alexnet_weights_file))
    for name in ("features.0.weight", "features.10.weight", "classifier.4.weight"):
        assert torch.equal(m.state_dict()[name], state[name])
    assert m.state_dict()["classifier.6.weight"].shape == (4, 4096)


def test_tiny_is_alexnet_at_small_widths(weights_file: Path) -> None:
    """Same modules at the same paths (so freezing, the feature cache's cut, pretrained files and
    export treat both alike), the same kernels and strides, the same output; far fewer weights."""
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["arch"])) == set(ARCHS)  # one list of networks
    assert {"alexnet", "tiny"} <= set(ARCHS)
    big, tiny = build_model(4, arch="alexnet"), build_model(4, str(weights_file), arch="tiny")
    assert [(n, type(m)) for n, m in big.named_modules() if n] == [(n, type(m)) for n, m in tiny.named_modules() if n]
    assert list(big.state_dict()) == list(tiny.state_dict())
    for name in LAYERS:
        a, b = layer(big, name), layer(tiny, name)
        assert model_mod.LAYER_MODULES[name] in dict(tiny.named_modules())
        if isinstance(a, torch.nn.Conv2d):
            assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding), name
    assert layer(tiny, "fc8").out_features == 4 and layer(tiny, "conv5").out_channels < 256
    x = torch.zeros(2, 3, 256, 256)
    with torch.no_grad():
        assert big.eval()(x).shape == tiny.eval()(x).shape == (2, 4)
        assert big.features[:10](x).shape[2:] == tiny.features[:10](x).shape[2:]  # the cache's cut: 15 × 15
    n_big, n_tiny = (sum(p.numel() for p in m.parameters()) for m in (big, tiny))
    assert n_big > 50_000_000 and n_tiny < 100_000
    state = torch.load(weights_file, weights_only=True)
    assert all(torch.equal(tiny.state_dict()[k], state[k]) for k in state if not k.startswith("classifier.6."))


def test_an_architecture_takes_only_its_own_weights(weights_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"is not an AlexNet state_dict \(size mismatch for features.0.weight"):
        build_model(4, str(weights_file), arch="alexnet")
    torch.save(new_model("alexnet", 10).state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(UsageError, match="is not a train.arch=tiny state_dict"):
        build_model(4, str(tmp_path / "alexnet.pth"), arch="tiny")
    with pytest.raises(UsageError, match="unknown architecture 'vgg'"):
        build_model(4, arch="vgg")
    with pytest.raises(UsageError, match="needs train.arch=alexnet"):
        build_model(4, "imagenet", arch="tiny")
    with pytest.raises(ValueError, match="train.pretrained' is imagenet .* train.arch is tiny"):
        TrainConfig(arch="tiny")  # refused with the config, before any download is tried
    assert TrainConfig(arch="tiny", pretrained="none").arch == "tiny" and TrainConfig().arch == "alexnet"


def test_bad_pretrained_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read pretrained"):
        build_model(4, str(tmp_path / "junk.pth"), arch="tiny")
    with pytest.raises(UsageError, match="does not exist"):
        build_model(4, str(tmp_path / "missing.pth"), arch="tiny")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="not a train.arch=tiny state_dict .missing .'features.0.weight'"):
        build_model(4, str(tmp_path / "other.pth"), arch="tiny")


def test_imagenet_offline_fails_fast_with_the_cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache, only for this test
    assert imagenet_cache_path().is_relative_to(tmp_path)

    calls: list[float | None] = []

    def offline(*args: object, **kwargs: object) -> None:  # what urllib raises with no network
        calls.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(UsageError) as err:
        build_model(4, "imagenet")
    msg = str(err.value)
    assert str(imagenet_cache_path()) in msg and "train.pretrained=" in msg and "\n" not in msg
    # Fast: one attempt, under a socket timeout of seconds (a dead network cannot hang it), then restored.
    assert calls == [model_mod.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before
    # With the file in the cache, no download is attempted.
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(build_model(1000).state_dict(), imagenet_cache_path())
    assert model_mod.fetch_imagenet_weights() == imagenet_cache_path()
    assert layer(build_model(4, "imagenet"), "fc8").out_features == 4


def test_recipes_resolve_and_are_recorded() -> None:
    paper = resolve_recipe(TrainConfig(pretrained="imagenet"))
    scratch = resolve_recipe(TrainConfig(pretrained="none"))
    assert (paper.recipe, paper.freeze) == ("paper", ["conv1", "conv2", "conv3", "conv4"])
    assert (scratch.recipe, scratch.freeze) == ("scratch", [])
    assert describe(scratch)["optimizer"] == "adam" and describe(paper)["new_layer_lr"] == 0.01
    forced = resolve_recipe(TrainConfig(pretrained="none", recipe="paper"))
    assert forced.recipe == "paper"


def test_paper_recipe_param_groups_and_schedule() -> None:
    t = resolve_recipe(TrainConfig(pretrained="x.pth", lr_step=2))
    m = build_model(4, arch="tiny")
    opt = make_optimizer(m, t)
    assert [g["lr"] for g in opt.param_groups] == [4e-4, 0.01]
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 4e-4
    new_ids = {id(p) for p in layer(m, "fc8").parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == new_ids
    for name in ("conv1", "conv2", "conv3", "conv4"):
        assert not any(p.requires_grad for p in layer(m, name).parameters())
    sched = make_scheduler(opt, t)
    lrs = []
    for _ in range(5):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for e, got in enumerate(lrs):
        assert got == pytest.approx([4e-4 * 0.2 ** (e // 2), 0.01 * 0.2 ** (e // 2)])


def test_frozen_layers_stay_bit_identical_and_trained_ones_move(weights_file: Path) -> None:
    t = resolve_recipe(TrainConfig(pretrained=str(weights_file), lr=0.01, arch="tiny"))
    m = build_model(4, t.pretrained, t.arch)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = make_optimizer(m, t)
    m.train()
    torch.manual_seed(0)
    for _ in range(2):
        loss = F.cross_entropy(m(torch.randn(2, 3, 256, 256)), torch.tensor([0, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    for name in ("conv1", "conv2", "conv3", "conv4"):
        prefix = model_mod.LAYER_MODULES[name]
        assert all(torch.equal(after[k], before[k]) for k in after if k.startswith(prefix + "."))
    for name in ("conv5", "fc6", "fc7", "fc8"):
        key = model_mod.LAYER_MODULES[name] + ".weight"
        assert not torch.equal(after[key], before[key]), name
