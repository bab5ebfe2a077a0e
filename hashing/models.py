"""Hashing networks: a backbone by name plus a hash head that outputs ``bits`` continuous values.

Backbones come from a registry (``list_models()``): ``smallcnn`` (and ``smallcnn-deep``, one conv
more) for small grey images such as MNIST, and torchvision ``alexnet``, ``vgg16``, ``resnet18``,
``resnet50``. Nothing is downloaded: torchvision models are built with ``weights=None`` and
pretrained weights come only from a local file (``pretrained_path``), loaded with
``weights_only=True``.

A trained model is saved as a plain state dict (``model.pt``) next to the config that rebuilds it
(``model.json``); ``load_model`` reverses ``save_model`` without unpickling arbitrary objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = ["HashModel", "build", "list_models", "load_model", "read_model_config", "save_model"]

MODEL_FILE = "model.pt"
CONFIG_FILE = "model.json"

_BACKBONES: dict[str, Callable[[int], tuple[nn.Module, int]]] = {}
# Channels each backbone was designed for (None: any); grey input is repeated to 3 channels for
# torchvision.
_NATIVE_CHANNELS: dict[str, int | None] = {}


def _register(name: str, native_channels: int | None = None):
    def wrap(factory: Callable[[int], tuple[nn.Module, int]]):
        _BACKBONES[name] = factory
        _NATIVE_CHANNELS[name] = native_channels
        return factory

    return wrap


def _conv(cin: int, cout: int) -> list[nn.Module]:
    """3x3 convolution, batch norm, ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def _small_body(in_channels: int, last_block_convs: int) -> tuple[nn.Module, int]:
    """Conv blocks of 32, 64 and 128 channels, each pooled by 2, then one dense layer of 256.

    Layers are made in the order they run: the seeded initial weights depend on that order.
    """
    layers = [*_conv(in_channels, 32), nn.MaxPool2d(2), *_conv(32, 64), nn.MaxPool2d(2)]
    layers += _conv(64, 128)
    for _ in range(last_block_convs - 1):
        layers += _conv(128, 128)
    layers += [
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(128 * 9, 256),
        nn.ReLU(True),
        nn.Dropout(0.3),
    ]
    return nn.Sequential(*layers), 256


@_register("smallcnn")
def _smallcnn(in_channels: int) -> tuple[nn.Module, int]:
    """Three conv blocks + one dense layer (~8M multiply-adds at 28x28): small enough for CPUs."""
    return _small_body(in_channels, last_block_convs=1)


@_register("smallcnn-deep")
def _smallcnn_deep(in_channels: int) -> tuple[nn.Module, int]:
    """smallcnn with a second 3x3 conv (128 -> 128) in its last block: ~15M multiply-adds at
    28x28, for configs/mnist5k-adsh-48-tuned.yaml."""
    return _small_body(in_channels, last_block_convs=2)


def _torchvision_body(name: str) -> Callable[[int], tuple[nn.Module, int]]:
    def factory(in_channels: int) -> tuple[nn.Module, int]:
        net = getattr(torchvision.models, name)(weights=None)
        if name.startswith("resnet"):
            dim = net.fc.in_features
            net.fc = nn.Identity()
        else:  # alexnet / vgg: keep the classifier up to its last hidden layer (fc7)
            dim = net.classifier[-1].in_features
            net.classifier[-1] = nn.Identity()
        return net, dim

    return factory


for _name in ("alexnet", "vgg16", "resnet18", "resnet50"):
    _register(_name, native_channels=3)(_torchvision_body(_name))


def list_models() -> list[str]:
    """Names accepted by ``build``."""
    return sorted(_BACKBONES)


class HashModel(nn.Module):
    """Backbone features -> ``bits`` continuous hash outputs (n x bits); codes are their signs.

    ``rotation`` (bits x bits, optional) is a post-hoc rotation fitted after training (ITQ, the
    SDSH search); ``embed`` applies it, ``forward`` does not, so training never sees it.

    ``shift_average``: ``embed`` averages the outputs for the image and its four one-pixel shifts
    (edges repeated) before the rotation. Test-time augmentation: five forward passes per image
    for codes that move less with where an object sits (its effect: docs/recipes.md).
    """

    def __init__(
        self, backbone: str, bits: int, in_channels: int = 3, shift_average: bool = False
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {list_models()}")
        if bits <= 0:
            raise ValueError(f"bits must be positive, got {bits}")
        native = _NATIVE_CHANNELS[backbone]
        self.repeat_channels = native is not None and native != in_channels
        if self.repeat_channels and in_channels != 1:
            raise ValueError(f"{backbone} takes 1 or {native} input channels, got {in_channels}")
        self.config = {
            "backbone": backbone,
            "bits": bits,
            "in_channels": in_channels,
            "shift_average": shift_average,
        }
        self.backbone, dim = _BACKBONES[backbone](in_channels if native is None else native)
        self.hash_head = nn.Linear(dim, bits)
        self.register_buffer("rotation", None)

    @property
    def bits(self) -> int:
        return self.config["bits"]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n x C x H x W) float -> continuous hash outputs (n x bits)."""
        if self.repeat_channels:
            images = images.expand(-1, 3, -1, -1)
        return self.hash_head(self.backbone(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Outputs used for codes (n x bits): ``forward`` (averaged over one-pixel shifts with
        ``shift_average``) then the fitted rotation, if any."""
        if self.config["shift_average"]:
            outputs = torch.stack([self.forward(x) for x in _one_pixel_shifts(images)]).mean(0)
        else:
            outputs = self.forward(images)
        return outputs if self.rotation is None else outputs @ self.rotation

    def set_rotation(self, rotation: torch.Tensor | None) -> None:
        """Attach a (bits x bits) rotation applied by ``embed``; None removes it."""
        if rotation is not None and tuple(rotation.shape) != (self.bits, self.bits):
            raise ValueError(
                f"rotation must be {self.bits}x{self.bits}, got {tuple(rotation.shape)}"
            )
        self.rotation = None if rotation is None else rotation.detach().float().clone()


def _one_pixel_shifts(images: torch.Tensor) -> list[torch.Tensor]:
    """``images`` (n x C x H x W) and the same moved one pixel down, up, right and left."""
    height, width = images.shape[-2:]
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="replicate")
    offsets = ((1, 1), (0, 1), (2, 1), (1, 0), (1, 2))  # (row, column) of the window; first: none
    return [padded[..., r : r + height, c : c + width] for r, c in offsets]


def build(
    name: str,
    *,
    bits: int,
    in_channels: int = 3,
    pretrained_path: str | Path | None = None,
    shift_average: bool = False,
) -> HashModel:
    """Build a ``HashModel`` with backbone ``name``; ``pretrained_path`` is a local backbone state
    dict."""
    model = HashModel(name, bits, in_channels, shift_average)
    if pretrained_path is not None:
        state = torch.load(Path(pretrained_path), map_location="cpu", weights_only=True)
        # torchvision checkpoints carry the ImageNet classifier; the backbone replaced it.
        own = model.backbone.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"{pretrained_path} has no weights matching backbone {name!r}")
        model.backbone.load_state_dict(usable, strict=False)
    return model


def save_model(
    model: HashModel, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model.pt`` (state dict) and ``model.json`` (config + ``extra``) into
    ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    config = {**model.config, "has_rotation": model.rotation is not None, **(extra or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> HashModel:
    """Rebuild a model saved by ``save_model`` (weights loaded with ``weights_only=True``)."""
    directory = Path(directory)
    config = read_model_config(directory)
    model = HashModel(
        config["backbone"],
        config["bits"],
        config.get("in_channels", 3),
        config.get("shift_average", False),
    )
    state = torch.load(directory / MODEL_FILE, map_location=map_location, weights_only=True)
    if config.get("has_rotation"):
        model.set_rotation(state["rotation"])
    model.load_state_dict(state)
    return model.eval()


def read_model_config(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` written by ``save_model``."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a saved hashray model directory")
    return json.loads(path.read_text())
