"""Typed options of the commands: what the parser fills in and what callers pass directly.

The defaults live here, once: the parser leaves an option out of its namespace when it is
not given, so the dataclass default applies, and a caller such as ``demo`` gets exactly
what the command line would give. The core defaults they start from are in torch-free
modules: the parser imports this one, and ``--help`` should not wait for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.targets import FramePolicy
from ..core.tiles import TileSpec
from ..core.train_config import TrainConfig

_T = TrainConfig


@dataclass(kw_only=True)
class TileOptions:
    tile_size: int | None = None
    stride: int | None = None
    border: str = TileSpec.border


@dataclass(kw_only=True)
class RunOptions:
    """How prediction runs: device, batch, precision, compile."""

    device: str = "auto"
    batch_size: int | None = None
    precision: str = "auto"
    compile: bool = False


@dataclass(kw_only=True)
class PolicyOptions:
    """Which frames of labelled data are used and their time targets (None: checkpoint's)."""

    onset: float | None = None
    frames_per_hour: float | None = None
    clamp: tuple[float, float] | None = None
    infected_window: tuple[float, float] = FramePolicy.infected_window_h
    uninfected_window: tuple[float, float] = FramePolicy.uninfected_window_h
    stride_frames: int = 1
    #: Channel of multichannel stacks, by index or name; a label table's column wins.
    channel: str | None = None


@dataclass(kw_only=True)
class SampleOptions:
    out: Path
    n_infected: int = 6
    n_mock: int = 6
    frames: int = 48
    size: int = 128
    onset: float = 1.0
    interval: float = 0.5
    seed: int = 0


@dataclass(kw_only=True)
class TrainOptions(PolicyOptions, TileOptions):
    data: Path
    out: Path
    checkpoint: Path | None = None
    arch: str = "resnet50"
    init: str = "imagenet"
    hidden_dim: int = 256
    dropout: float = 0.2
    cls_conditioning: bool = False
    image_size: int = 512
    epochs: int = _T.epochs
    batch_size: int = _T.batch_size
    lr: float | None = None  # None: the recipe's, else TrainConfig's
    weight_decay: float = _T.weight_decay
    cls_weight: float = _T.cls_weight
    reg_weight: float = _T.reg_weight
    mode: str = _T.mode
    no_augment: bool = False
    best_metric: str | None = None  # None: the recipe's, else TrainConfig's
    val_fraction: float = 0.1
    folds: int | None = None
    fold: int = 0
    test_fraction: float = 0.2
    seed: int = _T.seed
    device: str = "auto"
    sync_bn: bool = False
    #: The training recipe (core.recipes); the options below, when given, override it.
    recipe: str = "research"
    augment: str | None = None
    bf16_train: bool | None = None
    native_tiles: int | None = None
    warmup_epochs: int | None = None
    balanced: bool | None = None
    ema: float | None = None
    bn: str | None = None
    select: str | None = None
    resume: bool = False
    overwrite: bool = False


@dataclass(kw_only=True)
class PredictOptions(RunOptions, TileOptions):
    checkpoint: Path
    stacks: list[Path]
    out: Path
    maps: Path | None = None
    axes: str | None = None
    force_axes: bool = False
    channel: str | None = None
    interval: float | None = None
    frames: str | None = None
    shard: str | None = None


@dataclass(kw_only=True)
class MergeOptions:
    out: Path


@dataclass(kw_only=True)
class CVReportOptions:
    runs: list[Path]
    out: Path


@dataclass(kw_only=True)
class EvaluateOptions(RunOptions, PolicyOptions, TileOptions):
    checkpoint: Path
    data: Path
    out: Path
    bin_hours: float = 6.0


@dataclass(kw_only=True)
class DemoOptions:
    out: Path = Path("infection-clock-demo")
    epochs: int = 16
    arch: str = "resnet18"
    image_size: int = 64
    device: str = "auto"
    seed: int = 0
