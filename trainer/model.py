"""torchvision classifiers for spectrograms: weights, the replaced last layer, layer names.

``tiny`` is AlexNet's very layers, kernels, strides and module paths at small widths (~50 k
parameters), so tests and smoke runs exercise every code path (freezing, the feature cache,
pretrained files, checkpoints, export) in milliseconds a step. The last layer is always
replaced by a fresh ``num_classes`` layer, so ImageNet's or another dataset's head never
leaks in (docs/training.md: ``train.arch`` and ``train.pretrained``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from serwild.errors import UsageError
from serwild.processes.checkpoint import ARCHS, TORCHVISION_ARCHS, Checkpoint, safe_load, unreadable_reason

# The paper's layer names → torchvision's module paths inside AlexNet.
LAYER_MODULES = {
    "conv1": "features.0", "conv2": "features.3", "conv3": "features.6", "conv4": "features.8",
    "conv5": "features.10", "fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6",
}
NEW_LAYER = "fc8"
TINY_CONV = (8, 16, 16, 16, 16)  # conv1..conv5 output channels (AlexNet: 64, 192, 384, 256, 256)
TINY_FC = 64  # fc6 and fc7 widths (AlexNet: 4096)
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation: a dead network fails fast instead of hanging


def imagenet_url() -> str:
    # torchvision on demand: importing it imports torch._dynamo (seconds per process), which
    # the tiny model, evaluation of it and every tool that never builds AlexNet do not need.
    from torchvision.models import AlexNet_Weights

    return str(AlexNet_Weights.IMAGENET1K_V1.url)


def imagenet_cache_path() -> Path:
    """Where torch hub keeps (and torchvision looks for) the ImageNet AlexNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_url()).name


def fetch_imagenet_weights(progress: bool = False) -> Path:
    """The cached ImageNet weights file, downloading it first if needed (one clear error offline)."""
    path = imagenet_cache_path()
    if path.is_file():
        return path
    url = imagenet_url()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu")
    except Exception as e:  # URLError, timeouts, hash mismatch: all mean "no usable weights"
        raise UsageError(
            f"ImageNet AlexNet weights are not cached at {path} and could not be downloaded "
            f"({type(e).__name__}: {e}). Download {url} to that path (or set TORCH_HOME), "
            f"or pass train.pretrained=<path to an AlexNet state_dict>, or train.pretrained=none"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    if not path.is_file():
        raise UsageError(f"downloaded ImageNet weights but cannot find them at {path}")
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = safe_load(path)
    except FileNotFoundError:
        raise UsageError(f"pretrained weights file {path} does not exist "
                         f"(train.pretrained is imagenet, none or a path)") from None
    except Exception as e:  # never torch's advice to load it with weights_only=False
        raise UsageError(f"cannot read pretrained weights {path}: {unreadable_reason(path, e)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # one of our checkpoints
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} does not hold a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str = "alexnet") -> None:
    """Copy every layer except fc8 from ``state`` into ``model``; anything missing is an error."""
    head = LAYER_MODULES[NEW_LAYER] + "."
    wanted = {k: v for k, v in state.items() if not k.startswith(head)}
    what = "an AlexNet" if arch == "alexnet" else f"a train.arch={arch}"
    try:
        result = model.load_state_dict(wanted, strict=False)
    except RuntimeError as e:  # same names, other shapes: e.g. AlexNet's weights into the tiny model
        lines = str(e).strip().splitlines()  # a heading, then one line per mismatched tensor
        first = lines[min(1, len(lines) - 1)].strip()
        raise UsageError(f"{source} is not {what} state_dict ({first})") from None
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise UsageError(f"{source} is not {what} state_dict (missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]})")


class TinyAlexNet(nn.Module):
    """torchvision's AlexNet layer for layer (``features``, ``avgpool``, ``classifier``, the same
    kernels, strides, pools and dropout), with :data:`TINY_CONV` / :data:`TINY_FC` widths."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = TINY_CONV
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(c5 * 6 * 6, TINY_FC), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(TINY_FC, TINY_FC), nn.ReLU(inplace=True),
            nn.Linear(TINY_FC, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def new_model(arch: str = "alexnet", num_classes: int = 1000) -> nn.Module:
    """A randomly initialised ``arch`` (one of :data:`serwild.processes.checkpoint.ARCHS`)."""
    if arch == "alexnet":
        from torchvision.models import alexnet  # on demand: see imagenet_url

        return alexnet(weights=None, num_classes=num_classes)
    if arch == "tiny":
        return TinyAlexNet(num_classes)
    if arch in TORCHVISION_ARCHS:
        from torchvision.models import get_model

        return get_model(arch, weights=None, num_classes=num_classes)
    raise UsageError(f"unknown architecture {arch!r} (train.arch is one of {', '.join(ARCHS)})")


def build_model(num_classes: int, pretrained: str = "none", arch: str = "alexnet") -> nn.Module:
    """``arch`` with a fresh ``num_classes``-way last layer; weights from ``pretrained``."""
    if num_classes < 2:
        raise UsageError(f"need at least 2 classes, got {num_classes}")
    if arch in TORCHVISION_ARCHS:  # its own head, sized at construction; weights from a file of the same net
        model = new_model(arch, num_classes)
        if pretrained not in ("none", "imagenet"):
            state = _read_state_dict(Path(pretrained))
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise UsageError(f"pretrained file {pretrained} is not a {arch} state_dict with {num_classes} "
                                 f"classes ({first})") from None
        elif pretrained == "imagenet":
            raise UsageError(f"train.pretrained=imagenet needs train.arch=alexnet (got {arch}): no weights can be "
                             "downloaded here; use train.pretrained=none or a weights file")
        return model
    model = new_model(arch)
    if pretrained == "imagenet":
        if arch != "alexnet":  # torchvision publishes ImageNet weights for AlexNet only
            raise UsageError(f"train.pretrained=imagenet needs train.arch=alexnet (got {arch}): "
                             "use train.pretrained=none or a weights file")
        path = fetch_imagenet_weights()
        load_backbone(model, _read_state_dict(path), f"ImageNet weights {path}")
    elif pretrained != "none":
        load_backbone(model, _read_state_dict(Path(pretrained)), f"pretrained file {pretrained}", arch)
    old = model.classifier[6]
    model.classifier[6] = nn.Linear(old.in_features, num_classes)
    return model


def layer(model: nn.Module, name: str) -> nn.Module:
    """The module of paper layer ``name`` (conv1 … fc8) of the model itself (not its DDP wrapper)."""
    return model.get_submodule(LAYER_MODULES[name])


def layer_parameters(model: nn.Module, names: list[str]) -> Iterator[nn.Parameter]:
    for name in names:
        yield from layer(model, name).parameters()


def freeze_layers(model: nn.Module, names: list[str]) -> None:
    """requires_grad=False on these layers: no gradient, no optimiser step, no DDP all-reduce."""
    for p in layer_parameters(model, names):
        p.requires_grad_(False)


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """The trained model of a loaded checkpoint (see serwild.processes.checkpoint), in eval mode."""
    model = build_model(len(ckpt.classes), pretrained="none", arch=ckpt.arch)
    model.load_state_dict(ckpt.model)
    return model.eval()
