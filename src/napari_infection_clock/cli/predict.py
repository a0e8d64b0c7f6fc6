"""``predict``: a checkpoint over TIFF stacks; one CSV table, optionally per-tile maps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..core.atomic import check_writable, mark_input, write_atomic
from ..core.calibration import finish_table
from ..core.channels import channel_mismatch
from ..core.checkpoint import load_checkpoint
from ..core.maps import write_maps
from ..core.predictor import Predictor
from ..core.stack import open_stack
from .common import tile_spec, warn, warn_assumed
from .options import PredictOptions


def predict(opts: PredictOptions) -> int:
    for path in (opts.checkpoint, *opts.stacks):
        mark_input(path)  # so the table, before any work, may not replace one of them
    check_writable(opts.out)
    model, meta = load_checkpoint(opts.checkpoint)
    warn_assumed(meta, "predict")
    predictor = Predictor(
        model, meta, device=opts.device, batch_size=opts.batch_size, precision=opts.precision,
        compile=opts.compile,
    )
    del model  # the predictor runs its own copy: these weights can go (docs/benchmarks.md)
    tiles = tile_spec(opts)
    tables = []
    for index, path in enumerate(opts.stacks):
        with open_stack(
            path, axes=opts.axes, channel=opts.channel, frame_interval_h=opts.interval,
            force_axes=opts.force_axes,
        ) as stack:
            mismatch = channel_mismatch(meta.stacks, stack.channel_desc)
            if mismatch:
                warn(f"{path}: {mismatch}")
            frames = frame_range(opts.frames, stack.n_frames)
            run = predictor.iter_stack(stack, tiles, frames=frames)
            total = len(frames) if frames else stack.n_frames
            parts = [fp.table for fp in tqdm(run, total=total, unit="frame", desc=stack.name)]
            table = pd.concat(parts, ignore_index=True).sort_values(
                ["frame", "tile_row", "tile_col"]
            )
            table = finish_table(table, meta, stack)
            tables.append(table)
            print(onset_summary(table, stack.name))
            if opts.maps:
                # Two inputs with the same file name must not overwrite each other's maps.
                names = [Path(p).stem for p in opts.stacks]
                prefix = stack.name if names.count(stack.name) == 1 else f"{index}_{stack.name}"
                write_maps(table, stack, tiles, opts.maps / prefix)
    result = pd.concat(tables, ignore_index=True)
    write_atomic(opts.out, lambda tmp: result.to_csv(tmp, index=False))
    print(f"wrote {len(result)} rows to {opts.out} (device {predictor.device}, {meta.model.arch})")
    return 0


def frame_range(text: str | None, n_frames: int) -> list[int] | None:
    """``--frames``: ``N`` (one frame) or ``START:STOP`` (Python style, STOP excluded)."""
    if not text:
        return None
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            part = slice(int(start) if start else None, int(stop) if stop else None)
            frames = list(range(n_frames))[part]
        else:
            frames = [int(text)] if 0 <= int(text) < n_frames else []
    except ValueError as exc:
        raise ValueError(f"--frames must be N or START:STOP, e.g. 5 or 0:10; got {text!r}") from exc
    if not frames:
        raise ValueError(f"--frames {text} selects no frame of a {n_frames}-frame stack")
    return frames


def onset_summary(table: pd.DataFrame, name: str) -> str:
    """One line per stack: how many regions got infected, and when (median onset)."""
    regions = table.drop_duplicates(["y0", "x0", "y1", "x1"])
    onsets = regions["onset_h"].dropna()
    if onsets.empty:
        return f"{name}: no region infected ({len(regions)} regions)"
    if len(regions) == 1:
        row = regions.iloc[0]
        band = (f" ({row.onset_low_h:.1f}-{row.onset_high_h:.1f} h, 90 % bootstrap)"
                if pd.notna(row.onset_low_h) else "")
        return f"{name}: infected, onset {row.onset_h:.1f} h{band}"
    return (f"{name}: {len(onsets)} of {len(regions)} regions infected, onsets "
            f"{onsets.min():.1f}-{onsets.max():.1f} h (median {onsets.median():.1f} h)")
