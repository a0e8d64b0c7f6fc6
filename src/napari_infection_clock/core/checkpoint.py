"""Checkpoints: our own format, and the research pipeline's files (SPEC 8), loaded safely.

Every file is untrusted input: ``torch.load(weights_only=True)`` only, so a checkpoint can
hold tensors and plain data but never code. Writes are atomic, so the previous checkpoint
stays whole until the new one is.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .atomic import mark_input, write_atomic
from .model import ARCHITECTURES, FEATURE_WIDTH, ModelConfig, MultitaskResNet
from .preprocess import Preprocessing
from .targets import CLASS_NAMES, TimePolicy

FORMAT = "napari-infection-clock/1"
CHANNEL_HANDLING = "per-frame min-max to uint8; grayscale replicated to 3 channels; RGB kept"


def utc_now() -> str:
    """The time stamp written into checkpoints."""
    return datetime.now(timezone.utc).isoformat()


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for this model."""


@dataclass
class CheckpointMeta:
    """Everything besides the weights that predictions depend on, as plain data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    time: TimePolicy = field(default_factory=TimePolicy)
    channel_handling: str = CHANNEL_HANDLING
    class_names: tuple[str, ...] = CLASS_NAMES
    tile_size: int | None = None
    history: list[dict] = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)
    epoch: int | None = None
    #: Temperature and conformal time half-widths fitted on validation (core.calibration).
    calibration: dict = field(default_factory=dict)
    #: What chose ``epoch``: a validation metric (``val_roc_auc``...) or, without
    #: validation data, ``train_loss``.
    best_epoch_by: str | None = None
    #: The stacks it was trained on, as read (:func:`.items.stack_records`): path, channel
    #: index and description, frame interval and onset.
    stacks: list[dict] = field(default_factory=list)
    #: The training recipe (:class:`.recipes.Recipe` as a dict); empty: not recorded.
    recipe: dict = field(default_factory=dict)
    #: Settings the file did not give, filled with defaults (research files without config).
    assumed: list[str] = field(default_factory=list)
    source: str = "napari-infection-clock"
    package_version: str = __version__
    created: str = field(default_factory=utc_now)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model"] = self.model.to_dict()
        out["preprocessing"] = {
            "image_size": self.preprocessing.image_size,
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
        }
        out["time"] = {
            "frame_interval_h": self.time.frame_interval_h,
            "onset_h": self.time.onset_h,
            "clamp": list(self.time.clamp),
            "start_offset_h": self.time.start_offset_h,
        }
        out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointMeta:
        """Inverse of :meth:`to_dict`; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)} - {"model", "preprocessing", "time"}
        rest = {k: v for k, v in d.items() if k in known}
        if "class_names" in rest:
            rest["class_names"] = tuple(rest["class_names"])
        return cls(
            model=_dataclass_from(ModelConfig, d.get("model", {})),
            preprocessing=_dataclass_from(Preprocessing, d.get("preprocessing", {})),
            time=_dataclass_from(TimePolicy, d.get("time", {})),
            **rest,
        )


def _dataclass_from(cls, values: dict):
    """``cls(**values)`` for the fields ``cls`` has, lists turned into tuples."""
    names = {f.name for f in fields(cls)}
    return cls(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    )


def save_checkpoint(path, model: MultitaskResNet | dict, meta: CheckpointMeta) -> Path:
    """Write weights (a model's, or a state dict) and metadata atomically; the file at
    ``path`` is replaced only when whole."""
    state = model if isinstance(model, dict) else model.state_dict()
    payload = {
        "format": FORMAT,
        "model_state": {k: v.detach().cpu() for k, v in state.items()},
        "meta": meta.to_dict(),
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp), suffix=".pt")


def _numpy_scalar_globals() -> list:
    """What unpickling numpy's numeric scalars needs, and nothing more (SPEC 8).

    The research scripts store metrics, epochs and folds as numpy scalars; their pickle names
    ``numpy._core.multiarray.scalar`` (``numpy.core`` before numpy 2), ``numpy.dtype`` and the
    dtype's own class (numpy >= 1.25), the types PyTorch's ``weights_only`` docs say to allow
    for them. Arrays and object, string or void dtypes stay refused.
    """
    from numpy._core.multiarray import scalar
    codes = "?bhilqBHILQefd"  # bool, signed and unsigned ints, float16/32/64
    return [
        (scalar, "numpy._core.multiarray.scalar"),  # files written under numpy 2
        (scalar, "numpy.core.multiarray.scalar"),  # and under numpy 1.x
        np.dtype,
        *dict.fromkeys(type(np.dtype(c)) for c in codes),
    ]


_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def _refused_globals(message: str) -> list[str]:
    """The names of the Python objects a refused pickle asked for, from torch's message."""
    names = re.findall(r"GLOBAL (\S+)", message)
    names += re.findall(r"but got <class '([^']+)'>", message)
    return list(dict.fromkeys(n.rstrip(".,:") for n in names))


def read_checkpoint_file(path) -> dict:
    """``torch.load`` with ``weights_only=True``, turning every failure into a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    mark_input(path)
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"'{path}' is empty (0 bytes), so it holds no model; a save into it was probably "
            "interrupted. Choose the checkpoint file that training wrote (.pt or .pth)."
        )
    not_a_checkpoint = (
        f"'{path}' is not a PyTorch checkpoint: it is not a torch.save archive (another kind "
        "of file, or one cut short). Choose the checkpoint file that training wrote (.pt or .pth)."
    )
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(not_a_checkpoint) from exc
        names = _refused_globals(_ESCAPES.sub("", str(exc)))
        what = f" ({', '.join(names[:3])})" if names else ""
        raise CheckpointError(
            f"'{path}' holds Python objects other than tensors and plain data{what}, which are "
            "not loaded: loading them could run code. A usable checkpoint holds the model's "
            "state_dict and plain config values (numbers, strings, lists, dicts); re-save it "
            "that way from the code that made it."
        ) from exc
    except Exception as exc:  # truncated zips fail in many ways (KeyError, EOFError, ...)
        if not zipfile.is_zipfile(path):
            raise CheckpointError(not_a_checkpoint) from exc
        raise CheckpointError(
            f"'{path}' is a damaged PyTorch checkpoint (truncated or corrupt: "
            f"{type(exc).__name__}); save or copy it again."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def load_checkpoint(path, device="cpu", expected_arch: str | None = None):
    """Load our checkpoints and the research pipeline's; return ``(model, meta)`` in eval mode."""
    raw = read_checkpoint_file(path)
    if raw.get("format") == FORMAT or "model_state" in raw or "model_state_dict" in raw:
        state = raw.get("model_state", raw.get("model_state_dict"))
        if not isinstance(state, dict) or not state:
            raise CheckpointError(f"'{path}': the model weights entry is empty or not a state dict")
        try:
            if raw.get("format") == FORMAT:
                meta = CheckpointMeta.from_dict(raw["meta"])
            else:
                meta = _research_meta(raw, state, path)
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as exc:
            raise CheckpointError(f"'{path}': its metadata/config cannot be used: {exc!r}") from exc
    else:
        raise CheckpointError(
            f"'{path}' has no model weights: expected a 'model_state' or 'model_state_dict' "
            f"entry, found keys {sorted(map(str, raw))[:8]}"
        )
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    inferred = infer_model_config(state, path)
    if inferred.arch != meta.model.arch:
        raise CheckpointError(
            f"'{path}': its config names {meta.model.arch} but its weights are {inferred.arch}-"
            "shaped; the file is inconsistent"
        )
    if expected_arch and inferred.arch != expected_arch:
        raise CheckpointError(
            f"'{path}' holds a {inferred.arch} model, not the {expected_arch} that was asked for"
        )
    # The weights fix the layout; the dropout probability (no weights) comes from the config.
    inferred = replace(inferred, dropout=meta.model.dropout)
    meta.model = inferred
    model = MultitaskResNet(inferred)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        mismatch = re.search(r"size mismatch for (\S+?):", str(exc))
        raise CheckpointError(
            f"'{path}' does not fit a {inferred.arch} multitask model: a weight has the wrong "
            f"shape ({mismatch.group(1) if mismatch else 'see the file'})"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"'{path}' does not fit a {inferred.arch} multitask model: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise CheckpointError(
            f"'{path}' has weights that are not numbers (NaN or infinite) in "
            f"{', '.join(broken[:3])}"
            ": the training run diverged before this was saved. Use an earlier checkpoint of "
            "that run, or train again (a lower learning rate usually helps)."
        )
    return model.to(device).eval(), meta


def infer_model_config(state: dict, path="checkpoint") -> ModelConfig:
    """Read architecture, head width, dropout layout and class conditioning off the weights."""
    if "backbone.conv1.weight" not in state:
        raise CheckpointError(
            f"'{path}' has no ResNet backbone weights (backbone.conv1.weight): it is not a "
            "model of this plugin or of the research pipeline"
        )
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = tuple(
        1
        + max(int(m.group(1)) for k in state if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k)))
        for i in range(1, 5)
    )
    blocks = {
        (False, (2, 2, 2, 2)): "resnet18",
        (False, (3, 4, 6, 3)): "resnet34",
        (True, (3, 4, 6, 3)): "resnet50",
        (True, (3, 4, 23, 3)): "resnet101",
        (True, (3, 8, 36, 3)): "resnet152",
    }
    arch = blocks.get((bottleneck, depth))
    if arch is None:
        raise CheckpointError(
            f"'{path}': backbone with blocks {depth} is not one of {', '.join(ARCHITECTURES)}"
        )
    cls_linear = _linear_indices(state, "classifier")
    reg_linear = _linear_indices(state, "regressor")
    if not cls_linear or not reg_linear:
        raise CheckpointError(f"'{path}' lacks classifier or regressor head weights")
    n_classes = int(state[f"classifier.{cls_linear[-1]}.weight"].shape[0])
    if n_classes != len(CLASS_NAMES):
        raise CheckpointError(
            f"'{path}': its classifier has {n_classes} classes; this plugin predicts "
            f"{len(CLASS_NAMES)} ({', '.join(CLASS_NAMES)}), so the file cannot be used here"
        )
    if int(state[f"regressor.{reg_linear[-1]}.weight"].shape[0]) != 1:
        raise CheckpointError(f"'{path}': its time regressor does not give one value per item")
    hidden = (
        int(state[f"classifier.{cls_linear[0]}.weight"].shape[0]) if len(cls_linear) == 2 else 0
    )
    reg_in = int(state[f"regressor.{reg_linear[0]}.weight"].shape[1])
    return ModelConfig(
        arch=arch,
        hidden_dim=hidden,
        dropout_slots=cls_linear[0] == 1,
        cls_conditioning=reg_in == FEATURE_WIDTH[arch] + 2,
    )


def _linear_indices(state: dict, head: str) -> list[int]:
    return sorted(
        int(m.group(1)) for k in state if (m := re.fullmatch(rf"{head}\.(\d+)\.weight", k))
    )


def _research_meta(raw: dict, state: dict, path) -> CheckpointMeta:
    """SPEC 8 config -> our metadata: frame interval, onset, clamp and preprocessing.

    Settings the file does not give are defaulted and listed in ``meta.assumed``, so the
    CLI and the widgets can say that they are guesses.
    """
    config = raw.get("config") or {}
    data = config.get("data") or {}
    assumed: list[str] = []

    def pick(section: dict | None, key: str, default, label: str):
        if section and section.get(key) is not None:
            return section[key]
        assumed.append(label)
        return default

    model_cfg = config.get("model") or {}
    transforms, frames = data.get("transforms"), data.get("frames")
    multitask = config.get("multitask")
    arch = model_cfg.get("name") or infer_model_config(state, path).arch
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"the checkpoint's config names backbone {arch!r}, which is not one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    defaults = ModelConfig()
    fph = float(
        pick(frames, "frames_per_hour", 1.0 / TimePolicy.frame_interval_h, "frame interval")
    )
    return CheckpointMeta(
        model=ModelConfig(
            arch=arch,
            hidden_dim=int(model_cfg.get("hidden_dim", defaults.hidden_dim)),
            dropout=float(model_cfg.get("dropout", defaults.dropout)),
            cls_conditioning=bool(model_cfg.get("use_cls_conditioning", False)),
        ),
        preprocessing=Preprocessing(
            image_size=int(pick(transforms, "image_size", Preprocessing.image_size, "image size")),
            mean=tuple(float(v) for v in pick(transforms, "mean", Preprocessing.mean, "mean")),
            std=tuple(float(v) for v in pick(transforms, "std", Preprocessing.std, "std")),
        ),
        time=TimePolicy(
            frame_interval_h=1.0 / fph,
            onset_h=float(pick(multitask, "infection_onset_hour", TimePolicy.onset_h, "onset")),
            clamp=tuple(
                float(v) for v in pick(multitask, "clamp_range", TimePolicy.clamp, "clamp")
            ),
        ),
        val_metrics=_plain_floats(raw.get("val_metrics") or raw.get("best_metrics") or {}),
        epoch=_plain_int(raw.get("epoch")),
        source="research:" + ("model_state" if "model_state" in raw else "model_state_dict"),
        package_version="research pipeline",
        created="",
        assumed=assumed,
    )


def _plain_floats(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _plain_int(value) -> int | None:
    """An epoch as a Python int (research files may hold a numpy one), else None."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
