"""What the commands share: user errors, warnings, the frame policy, tiles and items."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from ..core.atomic import OutputNotWritable
from ..core.calibration import clock_interval
from ..core.checkpoint import CheckpointError, CheckpointMeta
from ..core.distributed import ranks_from_env
from ..core.items import FramePolicy, label_table_items, research_items
from ..core.labels import LabelTableError, read_label_table
from ..core.model import PretrainedWeightsUnavailable
from ..core.recipes import describe_recorded, native_tiles_of
from ..core.stack import StackError
from ..core.targets import TimePolicy
from ..core.tiles import TileSpec, resized_tiles_note
from ..core.trainer import TrainingError
from .options import PolicyOptions, TileOptions

T = TypeVar("T", bound=TileOptions)

#: Mistakes a user can make: one line on stderr and exit code 2, never a traceback.
USER_ERRORS = (
    StackError,
    CheckpointError,
    LabelTableError,
    TrainingError,
    OutputNotWritable,
    PretrainedWeightsUnavailable,
    FileNotFoundError,
    ValueError,
)


def warn(message: str) -> None:
    """A warning on stderr (from rank 0 only under torchrun)."""
    if not ranks_from_env().is_main:
        return
    print(f"infection-clock: warning: {message}", file=sys.stderr)


#: What a user can set, per command, when a checkpoint's clock is defaulted.
CLOCK_FLAGS = {
    "predict": "set --interval for stacks without a frame interval in their metadata",
    "evaluate": "set --onset / --frames-per-hour if they differ",
    "train": "set --onset / --frames-per-hour if they differ",
}


def warn_assumed(meta: CheckpointMeta, command: str) -> None:
    """Say which settings a checkpoint lacks and what ``command`` offers to set them."""
    if meta.assumed:
        warn(
            f"the checkpoint does not record its {', '.join(meta.assumed)}; defaults are used "
            f"(frame interval {meta.time.frame_interval_h:g} h, onset {meta.time.onset_h:g} h, "
            f"{meta.preprocessing.image_size} px): {CLOCK_FLAGS[command]}"
        )


def report_recipe(meta: CheckpointMeta, opts: T) -> T:
    """Say which recipe trained the checkpoint; the options to run it with: a native-tile
    model runs on its own tiles unless --tile-size says otherwise (which gets a warning)."""
    main = ranks_from_env().is_main
    if main:
        print(f"checkpoint: {meta.model.arch}, {meta.preprocessing.image_size} px, recipe "
              f"{describe_recorded(meta.recipe)}")
        print(describe_calibration(meta.calibration))
    tiles = native_tiles_of(meta.recipe)
    if tiles is None or opts.tile_size == tiles:
        return opts
    if opts.tile_size is not None:
        warn(resized_tiles_note(tiles, opts.tile_size, option="--tile-size"))
        return opts
    if main:
        print(f"tiles: {tiles} px, as the model was trained on native {tiles} px tiles "
              "(--tile-size chooses others)")
    return replace(opts, tile_size=tiles)


def describe_calibration(calibration: dict) -> str:
    """The checkpoint's calibration in one line: temperature, the per-frame and the
    consistent clock's interval half-widths, and whether the latter are calibrated."""
    if "temperature" not in (calibration or {}):
        return "calibration: none (no calibrated probabilities or intervals)"
    widths = calibration["time_halfwidth_h"]
    text = (f"calibrated on {calibration['n_validation']} validation items: temperature "
            f"{calibration['temperature']:.2f}, {calibration['level'] * 100:.0f} % time "
            f"intervals +/- {widths['infected']:.1f} h (infected), {widths['uninfected']:.1f} h "
            "(mock)")
    block = calibration.get("consistent")
    if block is None:
        return text + ("; consistent clock intervals uncalibrated (fitted before regions were "
                       "calibrated: a region's frames taken as independent; retrain to "
                       "calibrate them)")
    parts = []
    for name, said in (("infected", "infected"), ("uninfected", "mock")):
        state = clock_interval(calibration, name)
        parts.append(f"{said} {state.note}" if not state.bounded else
                     f"+/- {block['halfwidth_h'][name]:.1f} h ({said}, "
                     f"{block['n_regions'][name]} regions)")
    return text + "; consistent clock, calibrated over regions: " + ", ".join(parts)


def tile_spec(opts: TileOptions, meta: CheckpointMeta | None = None) -> TileSpec:
    """The tiles from the options; with ``meta``, a native-tile model's own tiles noted, so
    frames smaller than them are refused as that model's limit."""
    model_tiles = None if meta is None else native_tiles_of(meta.recipe)
    return TileSpec(opts.tile_size, opts.stride, opts.border, model_tiles=model_tiles)


def frame_policy(opts: PolicyOptions, base: TimePolicy | None = None) -> FramePolicy:
    """The frame policy from the options, unset values from ``base`` (a checkpoint's)."""
    base = base or TimePolicy()
    fph = 1.0 / base.frame_interval_h if opts.frames_per_hour is None else opts.frames_per_hour
    return FramePolicy(
        frames_per_hour=fph,
        infected_window_h=tuple(opts.infected_window),
        uninfected_window_h=tuple(opts.uninfected_window),
        infected_stride=opts.stride_frames,
        uninfected_stride=opts.stride_frames,
        onset_h=base.onset_h if opts.onset is None else opts.onset,
        clamp=base.clamp if opts.clamp is None else tuple(opts.clamp),
    )


def load_items(data: Path, policy: FramePolicy, tiles: TileSpec, channel: str | None = None):
    """Items from a label table (``.csv``) or a research folder; ``channel`` (``--channel``)
    for multichannel stacks, where a table's ``channel`` column does not say."""
    if data.suffix.lower() == ".csv":
        table = read_label_table(data)
        if table.empty:
            raise LabelTableError(f"label table {data} has no rows, only its header: add labels "
                                  "(one row per labelled frame or crop) and retry")
        return label_table_items(
            table,
            tiles=None if tiles.whole_frame else tiles,
            default_frame_interval_h=policy.frame_interval_h,
            clamp=policy.clamp,
            channel=channel,
        )
    return research_items(data, policy, tiles, channel=channel)


def print_headline(metrics_path: Path) -> None:
    m = json.loads(metrics_path.read_text())["overall"]
    c, r = m["classification"], m["regression"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(
        f"ROC AUC {fmt(c['roc_auc'])}, accuracy {fmt(c['accuracy'])}, "
        f"MAE {fmt(r['mae'])} h, RMSE {fmt(r['rmse'])} h, slope {fmt(r['slope'])}"
    )
