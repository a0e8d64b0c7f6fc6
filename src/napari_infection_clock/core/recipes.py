"""Training recipes: the named presets of the training options, defined here once.

``research`` is the research pipeline's recipe (SPEC 5-6) exactly and the default; ``clock``
keeps the options that helped on wells the model never saw (docs/quality.md says what the
ablation measured). A recipe is plain data,
so a checkpoint records the one that trained it and still loads with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

AUGMENTATIONS = ("spec", "microscopy", "none")
BN_MODES = ("batch", "frozen")
SELECTIONS = ("best", "smoothed")
#: Epochs averaged around each epoch by the ``smoothed`` selection rule.
SMOOTHING_WINDOW = 3
#: Validation metric that can pick the best epoch -> whether larger is better.
BEST_METRICS = {"roc_auc": True, "accuracy": True, "f1": True, "mae": False, "loss": False}
#: Width of the time bins that ``balanced`` sampling evens out, in hours.
BALANCE_BIN_H = 6.0


@dataclass(frozen=True)
class Recipe:
    """How a model is trained, beyond the loop's numbers (epochs, batch, learning rate)."""

    name: str = "research"
    #: ``spec``: flips and a rotation (SPEC 5); ``microscopy`` adds intensity, contrast,
    #: gamma, blur, noise and scale jitter; ``none``.
    augment: str = "spec"
    #: bf16 autocast for the backbone (CUDA, or a CPU with bf16 kernels); heads and losses fp32.
    bf16: bool = False
    #: Train on tiles of this many pixels cut from the full-resolution frame (no resize).
    native_tiles: int | None = None
    #: Epochs of linear learning-rate warm-up (per step) before the cosine schedule.
    warmup_epochs: int = 0
    #: Sample items with equal weight per (class, 6 h time bin) cell.
    balanced: bool = False
    #: Decay of an exponential moving average of the weights (validated and saved); 0: off.
    ema: float = 0.0
    #: ``batch``: BatchNorm learns batch statistics; ``frozen``: running statistics fixed.
    bn: str = "batch"
    #: ``best``: the best validated epoch; ``smoothed``: the best mean over neighbours.
    select: str = "best"
    #: The learning rate and the validation metric that picks the epoch, where the recipe
    #: sets them (None: the training configuration's own, SPEC 6's 1e-4 and ROC AUC).
    lr: float | None = None
    best_metric: str | None = None

    def __post_init__(self):
        for value, allowed, what in ((self.augment, AUGMENTATIONS, "augment"),
                                     (self.bn, BN_MODES, "bn"), (self.select, SELECTIONS, "select")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if self.native_tiles is not None and not int(self.native_tiles) >= 16:
            raise ValueError(f"native tiles must be at least 16 pixels, got {self.native_tiles}")
        if not 0 <= self.warmup_epochs or int(self.warmup_epochs) != self.warmup_epochs:
            raise ValueError(f"warm-up must be a whole number of epochs >= 0, got {self.warmup_epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.best_metric not in (None, *BEST_METRICS):
            raise ValueError(f"best_metric must be one of {tuple(BEST_METRICS)}, got "
                             f"{self.best_metric!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"the EMA decay must be in [0, 1) (0 turns it off), got {self.ema}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Recipe | None:
        """A recipe from a checkpoint (None for one that does not record it)."""
        if not d:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def describe(self) -> str:
        """``clock`` or ``clock, ema 0.99`` (what differs from the named preset)."""
        preset = RECIPES.get(self.name)
        if preset is None:
            return self.name
        changed = [f"{f.name.replace('_', ' ')} {getattr(self, f.name)}" for f in fields(self)
                   if f.name != "name" and getattr(self, f.name) != getattr(preset, f.name)]
        return ", ".join([self.name, *changed])

    def summary(self) -> str:
        """Every option, for the start of a training log."""
        return ", ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name)}"
                         for f in fields(self) if f.name != "name")


RESEARCH = Recipe()
#: What the 20-epoch ablation on shifted wells kept (docs/quality.md): a 10x learning rate,
#: the epoch picked by validation loss, microscopy augmentation and an EMA of the weights;
#: warm-up, balanced sampling, smoothed selection and frozen BatchNorm did not help there.
CLOCK = Recipe(name="clock", augment="microscopy", ema=0.999, lr=1e-3, best_metric="loss")
RECIPES = {r.name: r for r in (RESEARCH, CLOCK)}


def recipe(name: str, **overrides) -> Recipe:
    """The preset ``name`` with ``overrides`` (options left as None keep the preset's)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {name!r}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def describe_recorded(d: dict | None) -> str:
    """What a checkpoint says about its recipe, for evaluate and predict to print."""
    found = Recipe.from_dict(d)
    return "unknown (the checkpoint does not record it)" if found is None else found.describe()


def native_tiles_of(recorded: dict | None) -> int | None:
    """The tile size a checkpoint's model takes as its input, as its recipe records it
    (``--native-tiles``); None for a model of frames or crops resized to its input. Such a
    model is run and trained on tiles of that size cut at full resolution: whole frames
    shrunk to it would be an input it never saw, answered with confidence all the same."""
    tiles = (recorded or {}).get("native_tiles")
    return int(tiles) if tiles else None


def continuing(chosen: Recipe, start: dict | None) -> Recipe:
    """The recipe for training on from a checkpoint whose recipe is ``start``: ``chosen``,
    on the start model's native tiles unless ``chosen`` sets its own size."""
    tiles = native_tiles_of(start)
    if tiles is None or chosen.native_tiles is not None:
        return chosen
    return replace(chosen, native_tiles=tiles)
