"""What a training run is told: SPEC 6's numbers and the recipe (:mod:`.recipes`).

Plain data, without torch, apart from the loop (:mod:`.trainer`): the command line's options
take their defaults from here, and its ``--help`` would otherwise wait seconds for torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .recipes import BEST_METRICS, RESEARCH, Recipe

TRAIN_MODES = ("full", "heads")
#: SPEC 6's learning rate and best-epoch metric, where neither the caller nor the recipe sets one.
SPEC_LR = 1e-4
SPEC_BEST_METRIC = "roc_auc"


@dataclass(frozen=True)
class TrainConfig:
    """SPEC 6 defaults, except a CPU-friendly batch size; ``recipe`` the rest (core.recipes).

    ``lr`` / ``best_metric`` left as None are the recipe's where it sets them, else SPEC 6's
    (:data:`SPEC_LR`, :data:`SPEC_BEST_METRIC`); a value given here wins over the recipe's.
    ``augment=False`` turns the recipe's augmentation off; ``amp`` allows fp16 autocast on
    CUDA (the recipe's ``bf16`` asks for bf16 instead, on CUDA or a CPU that has it).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 1e-4
    eta_min: float = 1e-6
    cls_weight: float = 1.0
    reg_weight: float = 1.0
    grad_clip: float = 1.0
    mode: str = "full"
    augment: bool = True
    best_metric: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    sync_bn: bool = False  # BatchNorm statistics over the global batch under torchrun
    recipe: Recipe = RESEARCH

    def __post_init__(self):
        for name, spec in (("lr", SPEC_LR), ("best_metric", SPEC_BEST_METRIC)):
            if getattr(self, name) is None:
                own = getattr(self.recipe, name)
                object.__setattr__(self, name, spec if own is None else own)
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"training mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {tuple(BEST_METRICS)}, got {self.best_metric!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch size must be at least 1 and the learning rate positive")

    @property
    def augmentation(self) -> str:
        """The augmentation training items get (an :data:`.recipes.AUGMENTATIONS` name)."""
        return self.recipe.augment if self.augment else "none"

    @property
    def applied_recipe(self) -> Recipe:
        """The recipe as this configuration applies it (what the checkpoint records)."""
        return applied_recipe(self.recipe, self.augment, self.mode)


def applied_recipe(recipe: Recipe, augment: bool, mode: str) -> Recipe:
    """``recipe`` as a configuration with these ``augment`` and ``mode`` applies it.

    Heads-only training runs the heads in fp32 on cached, un-augmented features: neither
    bf16 nor the augmentation runs, and the checkpoint must not say they did.
    """
    if mode == "heads":
        return replace(recipe, augment="none", bf16=False)
    return replace(recipe, augment=recipe.augment if augment else "none")
