"""The multitask ResNet of SPEC 4: one backbone, a classification head and a time head.

Layer layout and names follow the research pipeline exactly (``backbone.*``,
``classifier.*``, ``regressor.*``), so its state dicts load without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from .choices import ARCHITECTURES, INIT_CHOICES

FEATURE_WIDTH = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are neither cached nor downloadable."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    hidden_dim: int = 256
    dropout: float = 0.2
    cls_conditioning: bool = False
    num_classes: int = 2
    #: Whether the heads have Dropout layers (even at p = 0). They shift the Linear layers
    #: to indices 1 and 4, the research layout; without them the Linears sit at 0 and 2.
    dropout_slots: bool = True

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"unknown backbone {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        if self.hidden_dim < 0 or not 0 <= self.dropout < 1:
            raise ValueError("hidden_dim must be >= 0 and dropout in [0, 1)")
        if self.num_classes != 2:
            raise ValueError("the infection clock has exactly two classes (uninfected, infected)")

    @property
    def feature_width(self) -> int:
        return FEATURE_WIDTH[self.arch]

    def to_dict(self) -> dict:
        return asdict(self)


def _head(in_features: int, config: ModelConfig, out_features: int) -> nn.Sequential:
    """SPEC 4 head: ``Dropout -> Linear -> ReLU -> Dropout -> Linear`` (one Linear if H = 0)."""

    def drop() -> list[nn.Module]:
        return [nn.Dropout(config.dropout)] if config.dropout_slots else []

    hidden = config.hidden_dim
    if hidden <= 0:
        return nn.Sequential(*drop(), nn.Linear(in_features, out_features))
    return nn.Sequential(
        *drop(), nn.Linear(in_features, hidden), nn.ReLU(), *drop(), nn.Linear(hidden, out_features)
    )


class MultitaskResNet(nn.Module):
    """Image -> (class logits (B, 2), time in hours (B,)) in one forward pass."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.backbone = models.get_model(config.arch, weights=None)
        self.backbone.fc = nn.Identity()
        width = config.feature_width
        self.classifier = _head(width, config, config.num_classes)
        reg_in = width + config.num_classes if config.cls_conditioning else width
        self.regressor = _head(reg_in, config, 1)

    def forward_heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads only: lets heads-only training reuse cached backbone features."""
        logits = self.classifier(features)
        reg_in = torch.cat([features, logits], dim=1) if self.config.cls_conditioning else features
        return logits, self.regressor(reg_in).squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        if torch.is_autocast_enabled(x.device.type):  # mixed-precision training: heads in fp32
            with torch.autocast(x.device.type, enabled=False):
                return self.forward_heads(features.float())
        return self.forward_heads(features)

    def freeze_backbone(self, frozen: bool = True) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


def imagenet_weights(arch: str):
    """torchvision's IMAGENET1K_V1 weights enum for ``arch`` (the research runs' choice)."""
    return models.get_model_weights(arch).IMAGENET1K_V1


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for (and caches) the ImageNet weights of ``arch``."""
    url = imagenet_weights(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_imagenet_backbone(model: MultitaskResNet, allow_download: bool = True) -> None:
    """Fill the backbone with ImageNet weights from torchvision's cache (or a download).

    Offline with an empty cache this raises :class:`PretrainedWeightsUnavailable` naming
    the file and folder torchvision looks in, so a user can copy the file there.
    """
    arch = model.config.arch
    weights = imagenet_weights(arch)
    target = imagenet_weights_file(arch)
    if not target.exists() and not allow_download:
        raise PretrainedWeightsUnavailable(_missing_weights_message(arch, target, None))
    try:
        state = weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "not reachable"
        raise PretrainedWeightsUnavailable(_missing_weights_message(arch, target, exc)) from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.backbone.load_state_dict(state, strict=True)


def _missing_weights_message(arch: str, target: Path, exc: Exception | None) -> str:
    reason = f" (download failed: {exc})" if exc else ""
    return (
        f"ImageNet weights for {arch} are not available{reason}. torchvision looks for "
        f"'{target.name}' in '{target.parent}'. Copy that file there from a machine with "
        f"internet access (from {imagenet_weights(arch).url}), or start from a checkpoint, "
        "or use random initialisation (init='random', CLI: --init random)."
    )


def build_model(
    config: ModelConfig = ModelConfig(), init: str = "random", allow_download: bool = True
) -> MultitaskResNet:
    """A new model with its backbone initialised from ImageNet or at random."""
    if init not in INIT_CHOICES:
        raise ValueError(
            f"unknown init {init!r}; choose one of {', '.join(INIT_CHOICES)} or load a checkpoint"
        )
    model = MultitaskResNet(config)
    if init == "imagenet":
        load_imagenet_backbone(model, allow_download=allow_download)
    return model
