"""``evaluate``: SPEC 7 metrics, the per-bin table and plots on labelled data."""

from __future__ import annotations

import pandas as pd
from tqdm import tqdm

from ..core.atomic import check_writable, write_atomic
from ..core.calibration import finish_table
from ..core.channels import channel_mismatch
from ..core.checkpoint import load_checkpoint
from ..core.evaluation import predict_items
from ..core.information import MIN_SIDE, describe_missing
from ..core.predictor import Predictor
from ..core.report import save_report
from .common import (
    frame_policy,
    load_items,
    print_headline,
    report_recipe,
    tile_spec,
    warn,
    warn_assumed,
)
from .options import EvaluateOptions


def evaluate(opts: EvaluateOptions) -> int:
    check_writable(opts.out / "metrics.json")
    if not opts.bin_hours > 0:
        raise ValueError(f"--bin-hours must be positive, got {opts.bin_hours}")
    model, meta = load_checkpoint(opts.checkpoint)
    warn_assumed(meta, "evaluate")
    opts = report_recipe(meta, opts)
    policy = frame_policy(opts, base=meta.time)
    items = load_items(opts.data, policy, tile_spec(opts, meta), opts.channel)
    for desc in sorted({it.channel_desc for it in items}):
        mismatch = channel_mismatch(meta.stacks, desc)
        if mismatch:
            warn(mismatch.replace("this stack is", "stacks here are"))
    predictor = Predictor(
        model, meta, device=opts.device, batch_size=opts.batch_size, precision=opts.precision,
        compile=opts.compile,
    )
    n_frames = len({(it.stack, it.frame) for it in items})
    parts = list(
        tqdm(predict_items(predictor, items), total=n_frames, unit="frame", desc="evaluate")
    )
    table = finish_table(pd.concat(parts, ignore_index=True), meta)
    opts.out.mkdir(parents=True, exist_ok=True)
    write_atomic(opts.out / "predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
    paths = save_report(table, opts.out, bin_hours=opts.bin_hours, calibration=meta.calibration)
    print(f"wrote the report to {opts.out}: " + ", ".join(sorted(p.name for p in paths.values())))
    print_headline(paths["metrics.json"])
    missing = describe_missing(table)
    if missing:
        print(f"{missing}: left out of the metrics (constant or under {MIN_SIDE} px a side)")
    return 0
