"""``predict``: a checkpoint over TIFF stacks; one CSV table, optionally per-tile maps.

Sharded (``--shard I/N``, torchrun, or a SLURM job array) each process predicts its share
of the stacks into ``OUT.parts`` (see :mod:`..core.shards`); the last one merges.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..core import distributed
from ..core.atomic import check_writable, mark_input, write_atomic
from ..core.calibration import finish_table
from ..core.channels import channel_mismatch
from ..core.checkpoint import load_checkpoint
from ..core.information import MIN_SIDE, describe_missing
from ..core.maps import write_maps
from ..core.predictor import Predictor
from ..core.shards import Parts, merge_parts, parse_shard, parts_dir, shard_from_env
from ..core.stack import open_stack
from .common import report_recipe, tile_spec, warn, warn_assumed
from .options import MergeOptions, PredictOptions


def predict(opts: PredictOptions) -> int:
    for path in (opts.checkpoint, *opts.stacks):
        mark_input(path)  # so the table, before any work, may not replace one of them
    check_writable(opts.out)
    shard = parse_shard(opts.shard) if opts.shard else shard_from_env()
    torchrun = shard is not None and not opts.shard and ranks_under_torchrun()
    device = opts.device
    if torchrun:
        _, chosen = distributed.start(opts.device)
        device = str(chosen)
    model, meta = load_checkpoint(opts.checkpoint)
    warn_assumed(meta, "predict")
    opts = report_recipe(meta, opts)
    predictor = Predictor(
        model, meta, device=device, batch_size=opts.batch_size, precision=opts.precision,
        compile=opts.compile,
    )
    del model  # the predictor runs its own copy: these weights can go (docs/benchmarks.md)
    if shard is None:
        tables = [_predict_stack(predictor, i, opts) for i in range(len(opts.stacks))]
        result = pd.concat(tables, ignore_index=True)
        write_atomic(opts.out, lambda tmp: result.to_csv(tmp, index=False))
        print(f"wrote {len(result)} rows to {opts.out} (device {predictor.device}, "
              f"{meta.model.arch})")
        return 0
    parts = Parts(opts.out, opts.stacks, _settings(opts))
    parts.claim()
    mine = shard.mine(len(opts.stacks))
    todo = [i for i in mine if not parts.finished(i)]
    source = "--shard" if opts.shard else ("torchrun" if torchrun else "SLURM_ARRAY_TASK_ID")
    print(f"shard {shard.index}/{shard.count} (from {source}): {len(mine)} of "
          f"{len(opts.stacks)} stacks, "
          f"{len(mine) - len(todo)} already finished (skipped)")
    for i in todo:
        parts.write(i, _predict_stack(predictor, i, opts), shard)
    if torchrun:
        distributed.barrier()
        last = distributed.current_ranks().is_last
        distributed.stop()
        if not last:
            return 0
    missing = parts.missing()
    if missing:
        print(f"{len(opts.stacks) - len(missing)} of {len(opts.stacks)} stacks done in "
              f"{parts_dir(opts.out)}; the last shard to finish writes {opts.out}, or run "
              f"'infection-clock merge-predictions {opts.out}'")
        return 0
    rows = merge_parts(opts.out)
    print(f"all {len(opts.stacks)} stacks done: wrote {rows} rows to {opts.out}")
    return 0


def merge_predictions(opts: MergeOptions) -> int:
    rows = merge_parts(opts.out)
    print(f"wrote {rows} rows to {opts.out}")
    return 0


def ranks_under_torchrun() -> bool:
    return distributed.ranks_from_env().world_size > 1


def _settings(opts: PredictOptions) -> dict:
    """What makes two shards parts of the same prediction (the device may differ)."""
    ckpt = Path(opts.checkpoint).resolve()
    stat = ckpt.stat()
    return {
        "checkpoint": str(ckpt), "checkpoint_size": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
        **{k: getattr(opts, k) for k in ("tile_size", "stride", "border", "axes", "channel",
                                         "interval", "frames", "precision")},
        "maps": None if opts.maps is None else str(Path(opts.maps).resolve()),
    }


def _predict_stack(predictor: Predictor, index: int, opts: PredictOptions) -> pd.DataFrame:
    """One stack's table (its maps too with ``--maps``), frames in order."""
    tiles = tile_spec(opts, predictor.meta)
    path = opts.stacks[index]
    with open_stack(path, axes=opts.axes, channel=opts.channel, frame_interval_h=opts.interval,
                    force_axes=opts.force_axes) as stack:
        mismatch = channel_mismatch(predictor.meta.stacks, stack.channel_desc)
        if mismatch:
            warn(f"{path}: {mismatch}")
        frames = frame_range(opts.frames, stack.n_frames)
        run = predictor.iter_stack(stack, tiles, frames=frames)
        total = len(frames) if frames else stack.n_frames
        parts = [fp.table for fp in tqdm(run, total=total, unit="frame", desc=stack.name)]
        table = pd.concat(parts, ignore_index=True).sort_values(["frame", "tile_row", "tile_col"])
        table = finish_table(table, predictor.meta, stack)
        missing = describe_missing(table)
        if missing:
            print(f"{stack.name}: {missing} (constant, or under {MIN_SIDE} px a side): "
                  "marked 'no information', without class, probability or time")
        print(onset_summary(table, stack.name))
        if opts.maps:
            # Two inputs with the same file name must not overwrite each other's maps.
            names = [Path(p).stem for p in opts.stacks]
            prefix = stack.name if names.count(stack.name) == 1 else f"{index}_{stack.name}"
            write_maps(table, stack, tiles, opts.maps / prefix)
    return table


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
