"""``infection-clock``: the headless front of the core (train, predict, evaluate, sample, demo).

A thin layer: it parses arguments, drives the core's generators with progress bars and
turns user mistakes into one clear line and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import __version__
from .core.atomic import OutputNotWritable, check_writable, write_atomic
from .core.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, utc_now
from .core.dataset import ItemDataset
from .core.evaluation import predict_items
from .core.items import (
    FramePolicy,
    items_frame,
    kfold_by_group,
    label_table_items,
    research_items,
    split_by_group,
)
from .core.labels import LabelTableError, read_label_table
from .core.model import (
    ARCHITECTURES,
    INIT_CHOICES,
    ModelConfig,
    PretrainedWeightsUnavailable,
    build_model,
)
from .core.predictor import Predictor
from .core.preprocess import Preprocessing
from .core.report import save_report
from .core.runtime import PRECISIONS
from .core.stack import StackError, open_stack, write_stack
from .core.synthetic import write_research_dataset
from .core.targets import DEFAULT_CLAMP, DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H, TimePolicy
from .core.tiles import BORDERS, TileSpec, tile_grid_shape
from .core.trainer import BEST_METRICS, TRAIN_MODES, TrainConfig, TrainingError, iter_train

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"infection-clock {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infection-clock {args.command}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infection-clock",
        description="Infection state and infection clock from live-cell time-lapse stacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="write the synthetic research-layout dataset")
    p.add_argument("out", type=Path, help="folder to create (gets infected/ and uninfected/)")
    _sample_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train or fine-tune a model; writes a checkpoint and report")
    p.add_argument(
        "data",
        type=Path,
        help="research folder (ROOT/infected, ROOT/uninfected) or a label table CSV",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict stacks with a checkpoint; writes a CSV table")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("stacks", type=Path, nargs="+", help="TIFF stacks")
    p.add_argument("--out", type=Path, required=True, help="CSV file for the prediction table")
    p.add_argument(
        "--maps", type=Path, help="also write probability and duration maps as TIFF here"
    )
    _stack_args(p)
    _tile_args(p)
    _run_args(p)
    p.add_argument("--frames", help="frame range START:STOP (Python style, STOP excluded)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics, per-bin table and plots on labelled data")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path, help="research folder or label table CSV")
    p.add_argument("--out", type=Path, required=True, help="output folder for the report")
    p.add_argument("--bin-hours", type=float, default=6.0, help="time bin width (default 6 h)")
    _policy_args(p)
    _tile_args(p)
    _run_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole loop on synthetic data on a CPU in a few minutes")
    p.add_argument("--out", type=Path, default=Path("infection-clock-demo"), help="output folder")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--arch", choices=ARCHITECTURES, default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def _sample_args(p):
    p.add_argument("--n-infected", type=int, default=6)
    p.add_argument("--n-mock", type=int, default=6)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--onset", type=float, default=1.0, help="infection onset in hours")
    p.add_argument("--interval", type=float, default=0.5, help="frame interval in hours")
    p.add_argument("--seed", type=int, default=0)


def _stack_args(p):
    p.add_argument("--axes", help="axes of the TIFF, e.g. TYX or TCYX (default: from metadata)")
    p.add_argument("--channel", type=int, help="channel index for multichannel stacks")
    p.add_argument(
        "--interval",
        type=float,
        help="frame interval in hours (default: metadata, else checkpoint)",
    )


def _tile_args(p):
    p.add_argument("--tile-size", type=int, help="tile size in pixels (default: whole frames)")
    p.add_argument("--stride", type=int, help="tile stride in pixels (default: tile size)")
    p.add_argument("--border", choices=BORDERS, default="pad", help="tiles at the frame edge")


def _run_args(p):
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--batch-size", type=int, help="items per forward pass (default: 4 on CPU, 16 on GPU)"
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="fp32 forces exact float32"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: faster on long runs after seconds to a minute of "
        "compiling; needs a C++ compiler (without one it warns and runs as usual)",
    )


def _policy_args(p):
    hint = " (default: the checkpoint's, else {})"
    p.add_argument(
        "--onset",
        type=float,
        help="infection onset in hours" + hint.format(f"{DEFAULT_ONSET_H} h"),
    )
    p.add_argument(
        "--frames-per-hour",
        type=float,
        help="frames per hour for stacks without a frame interval in their metadata"
        + hint.format(1 / DEFAULT_FRAME_INTERVAL_H),
    )
    p.add_argument(
        "--clamp",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="time targets and predictions are clamped to this range in hours"
        + hint.format(f"{DEFAULT_CLAMP[0]:g} {DEFAULT_CLAMP[1]:g}"),
    )
    p.add_argument(
        "--infected-window",
        type=float,
        nargs=2,
        default=FramePolicy.infected_window_h,
        metavar=("FROM", "TO"),
        help="hours of infected stacks to use",
    )
    p.add_argument(
        "--uninfected-window",
        type=float,
        nargs=2,
        default=FramePolicy.uninfected_window_h,
        metavar=("FROM", "TO"),
        help="hours of mock stacks to use",
    )
    p.add_argument("--stride-frames", type=int, default=1, help="take every Nth frame")


def _train_args(p):
    _policy_args(p)
    _tile_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, help="start from this checkpoint (ours or research)")
    g.add_argument("--arch", choices=ARCHITECTURES, default="resnet50")
    g.add_argument(
        "--init",
        choices=INIT_CHOICES,
        default="imagenet",
        help="backbone initialisation without --checkpoint",
    )
    g.add_argument("--hidden-dim", type=int, default=256)
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--cls-conditioning", action="store_true")
    g.add_argument("--image-size", type=int, default=512)
    g = p.add_argument_group("training")
    d = TrainConfig()
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--cls-weight", type=float, default=d.cls_weight)
    g.add_argument("--reg-weight", type=float, default=d.reg_weight)
    g.add_argument(
        "--mode", choices=TRAIN_MODES, default=d.mode, help="full fine-tune or heads only"
    )
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--best-metric", choices=tuple(BEST_METRICS), default=d.best_metric)
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation by well: train on k-1 folds, validate and report on one",
    )
    g.add_argument("--fold", type=int, default=0, help="which fold to hold out (0-based)")
    g.add_argument("--test-fraction", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default="auto")


def _tiles(args) -> TileSpec:
    return TileSpec(args.tile_size, args.stride, args.border)


def _policy(args, base: TimePolicy | None = None) -> FramePolicy:
    """The frame policy from the command line, unset values from ``base`` (a checkpoint's)."""
    base = base or TimePolicy()
    fph = 1.0 / base.frame_interval_h if args.frames_per_hour is None else args.frames_per_hour
    return FramePolicy(
        frames_per_hour=fph,
        infected_window_h=tuple(args.infected_window),
        uninfected_window_h=tuple(args.uninfected_window),
        infected_stride=args.stride_frames,
        uninfected_stride=args.stride_frames,
        onset_h=base.onset_h if args.onset is None else args.onset,
        clamp=base.clamp if args.clamp is None else tuple(args.clamp),
    )


def _items(data: Path, policy: FramePolicy, tiles: TileSpec):
    if data.suffix.lower() == ".csv":
        return label_table_items(
            read_label_table(data),
            tiles=None if tiles.whole_frame else tiles,
            default_frame_interval_h=policy.frame_interval_h,
            clamp=policy.clamp,
        )
    return research_items(data, policy, tiles)


def cmd_sample(args) -> int:
    paths = write_research_dataset(
        args.out,
        n_infected=args.n_infected,
        n_mock=args.n_mock,
        n_frames=args.frames,
        size=args.size,
        frame_interval_h=args.interval,
        onset_h=args.onset,
        seed=args.seed,
    )
    print(f"wrote {len(paths)} stacks to {args.out}")
    return 0


def cmd_train(args) -> int:
    check_writable(args.out / "model.pt")
    base = None
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        _warn_assumed(meta)
        _warn_ignored_model_options(args, meta)
        base = meta.time
    policy = _policy(args, base=base)
    tiles = _tiles(args)
    items = _items(args.data, policy, tiles)
    if args.folds:
        folds = kfold_by_group(items, args.folds, args.seed)
        if not 0 <= args.fold < len(folds):
            raise ValueError(f"--fold must be between 0 and {len(folds) - 1}, got {args.fold}")
        rest, test = folds[args.fold]
        # Validation (which picks the best epoch) comes from the training folds, so the
        # held-out fold's report is not biased by that choice.
        train, val, _ = split_by_group(rest, args.val_fraction, 0.0, args.seed)
    else:
        train, val, test = split_by_group(items, args.val_fraction, args.test_fraction, args.seed)
    if not args.checkpoint:  # built after the data checks: ImageNet weights may be missing
        config = ModelConfig(args.arch, args.hidden_dim, args.dropout, args.cls_conditioning)
        model = build_model(config, init=args.init)
        meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=args.image_size))
    meta = replace(
        meta,
        time=policy.time_policy(),
        tile_size=tiles.tile_size,
        source="napari-infection-clock",
        package_version=__version__,
        created=utc_now(),
        assumed=[],
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        cls_weight=args.cls_weight,
        reg_weight=args.reg_weight,
        mode=args.mode,
        augment=not args.no_augment,
        best_metric=args.best_metric,
        seed=args.seed,
        device=args.device,
    )
    return _train_and_report(model, meta, config, train, val, test, args.out)


def _warn(message: str) -> None:
    print(f"infection-clock: warning: {message}", file=sys.stderr)


def _warn_assumed(meta: CheckpointMeta) -> None:
    if meta.assumed:
        _warn(
            f"the checkpoint does not record its {', '.join(meta.assumed)}; defaults are used "
            f"(frame interval {meta.time.frame_interval_h:g} h, onset {meta.time.onset_h:g} h, "
            f"{meta.preprocessing.image_size} px): set --onset / --frames-per-hour if they differ"
        )


def _warn_ignored_model_options(args, meta: CheckpointMeta) -> None:
    """With --checkpoint the architecture and input size are the checkpoint's."""
    given = {
        "--arch": (args.arch, meta.model.arch),
        "--hidden-dim": (args.hidden_dim, meta.model.hidden_dim),
        "--cls-conditioning": (args.cls_conditioning, meta.model.cls_conditioning),
        "--image-size": (args.image_size, meta.preprocessing.image_size),
    }
    differing = [flag for flag, (ours, theirs) in given.items() if ours != theirs]
    if differing:
        _warn(f"{', '.join(differing)} ignored: the model comes from {args.checkpoint}")


def _train_and_report(model, meta, config, train, val, test, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    splits = pd.concat(
        [
            items_frame(part).assign(split=name)
            for name, part in (("train", train), ("val", val), ("test", test))
            if part
        ],
        ignore_index=True,
    )
    write_atomic(out / "splits.csv", lambda tmp: splits.to_csv(tmp, index=False))
    print(
        f"training on {len(train)} items, validating on {len(val)}, testing on {len(test)} "
        f"({meta.model.arch}, {config.mode}, {config.epochs} epochs, {meta.preprocessing.image_size} px)"
    )
    train_ds = ItemDataset(train, meta.preprocessing, augment=config.augment)
    val_ds = ItemDataset(val, meta.preprocessing)
    ckpt = out / "model.pt"
    bar = tqdm(
        total=config.epochs * max(1, -(-len(train) // config.batch_size)),
        unit="batch",
        desc="train",
    )
    last = None
    for last in iter_train(model, train_ds, val_ds, config, meta, checkpoint_path=ckpt):
        if last.stage == "batch":
            bar.update(1)
            bar.set_postfix(loss=f"{last.loss:.3f}")
        elif last.stage == "epoch":
            r = last.record
            tqdm.write(
                f"epoch {r['epoch']}: train loss {r['train_loss']:.3f}"
                + (
                    f", val AUC {r['val_roc_auc']:.3f}, val MAE {r['val_mae']:.2f} h"
                    if "val_mae" in r
                    else ""
                )
            )
    bar.close()
    history = pd.DataFrame(last.history)
    write_atomic(out / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
    print(f"best epoch {last.best_epoch}; checkpoint {ckpt}")
    if test:
        predictor = Predictor(model, meta, device=config.device, batch_size=config.batch_size)
        table = pd.concat(predict_items(predictor, test), ignore_index=True)
        write_atomic(out / "test_predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
        paths = save_report(table, out / "report")
        print(f"test report: {paths['metrics.json'].parent}")
        _print_headline(paths["metrics.json"])
    return 0


def _print_headline(metrics_path: Path) -> None:
    import json

    m = json.loads(metrics_path.read_text())["overall"]
    c, r = m["classification"], m["regression"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(
        f"ROC AUC {fmt(c['roc_auc'])}, accuracy {fmt(c['accuracy'])}, "
        f"MAE {fmt(r['mae'])} h, RMSE {fmt(r['rmse'])} h, slope {fmt(r['slope'])}"
    )


def _frame_range(text: str | None, n_frames: int) -> list[int] | None:
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


def cmd_predict(args) -> int:
    check_writable(args.out)
    model, meta = load_checkpoint(args.checkpoint)
    _warn_assumed(meta)
    predictor = Predictor(
        model, meta, device=args.device, batch_size=args.batch_size, precision=args.precision,
        compile=args.compile,
    )
    tiles = _tiles(args)
    tables = []
    for index, path in enumerate(args.stacks):
        with open_stack(
            path, axes=args.axes, channel=args.channel, frame_interval_h=args.interval
        ) as stack:
            frames = _frame_range(args.frames, stack.n_frames)
            run = predictor.iter_stack(stack, tiles, frames=frames)
            total = len(frames) if frames else stack.n_frames
            parts = [fp.table for fp in tqdm(run, total=total, unit="frame", desc=stack.name)]
            table = pd.concat(parts, ignore_index=True).sort_values(
                ["frame", "tile_row", "tile_col"]
            )
            tables.append(table)
            if args.maps:
                # Two inputs with the same file name must not overwrite each other's maps.
                names = [Path(p).stem for p in args.stacks]
                prefix = stack.name if names.count(stack.name) == 1 else f"{index}_{stack.name}"
                _write_maps(table, stack, tiles, args.maps / prefix)
    result = pd.concat(tables, ignore_index=True)
    write_atomic(args.out, lambda tmp: result.to_csv(tmp, index=False))
    print(f"wrote {len(result)} rows to {args.out} (device {predictor.device}, {meta.model.arch})")
    return 0


def _write_maps(table: pd.DataFrame, stack, tiles: TileSpec, prefix: Path) -> None:
    """Per-tile probability and duration grids (T, rows, cols) as float32 TIFF stacks.

    They cover every frame of the stack, so map frame i is stack frame i; frames that were
    not predicted, and duration where the class is uninfected, are NaN.
    """
    rows, cols = tile_grid_shape(*stack.frame_shape, tiles)
    prob = np.full((stack.n_frames, rows, cols), np.nan, np.float32)
    duration = np.full_like(prob, np.nan)
    t, r, c = (table[k].to_numpy() for k in ("frame", "tile_row", "tile_col"))
    prob[t, r, c] = table["p_infected"].to_numpy()
    infected = table["pred_class"].to_numpy() == 1
    duration[t[infected], r[infected], c[infected]] = table["pred_time_h"].to_numpy()[infected]
    for suffix, grid in (("p_infected", prob), ("duration_h", duration)):
        write_stack(f"{prefix}_{suffix}.tif", grid, frame_interval_h=stack.frame_interval_h)


def cmd_evaluate(args) -> int:
    check_writable(args.out / "metrics.json")
    if not args.bin_hours > 0:
        raise ValueError(f"--bin-hours must be positive, got {args.bin_hours}")
    model, meta = load_checkpoint(args.checkpoint)
    _warn_assumed(meta)
    policy = _policy(args, base=meta.time)
    items = _items(args.data, policy, _tiles(args))
    predictor = Predictor(
        model, meta, device=args.device, batch_size=args.batch_size, precision=args.precision,
        compile=args.compile,
    )
    n_frames = len({(it.stack, it.frame) for it in items})
    parts = list(
        tqdm(predict_items(predictor, items), total=n_frames, unit="frame", desc="evaluate")
    )
    table = pd.concat(parts, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
    paths = save_report(table, args.out, bin_hours=args.bin_hours)
    print(f"wrote the report to {args.out}: " + ", ".join(sorted(p.name for p in paths.values())))
    _print_headline(paths["metrics.json"])
    return 0


def cmd_demo(args) -> int:
    start = time.perf_counter()
    out = args.out
    data = out / "data"
    print(f"1/4 generating synthetic infected and mock stacks in {data}")
    write_research_dataset(data, seed=args.seed)
    policy = FramePolicy()
    items = research_items(data, policy)
    train, val, test = split_by_group(items, 0.2, 0.2, args.seed)
    config = ModelConfig(args.arch)
    model = build_model(config, init="random")
    meta = CheckpointMeta(
        model=config,
        preprocessing=Preprocessing(image_size=args.image_size),
        time=policy.time_policy(),
    )
    print("2/4 training (random init: ImageNet weights are not needed for the demo)")
    # From scratch the classifier saturates early, so the combined loss picks the epoch.
    train_cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=32,
        lr=1e-3,
        best_metric="loss",
        seed=args.seed,
        device=args.device,
    )
    _train_and_report(model, meta, train_cfg, train, val, test, out / "training")
    print("3/4 evaluating on the held-out wells: see above and", out / "training" / "report")
    example = Path(test[0].stack) if test else Path(train[0].stack)
    predictions = out / "predictions.csv"
    print(f"4/4 predicting {example.name}")
    # Through the real parser, so the demo's predict gets every option's default.
    cmd_predict(build_parser().parse_args([
        "predict", str(out / "training" / "model.pt"), str(example), "--out", str(predictions),
        "--maps", str(out / "maps"), "--device", args.device]))
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Results in {out}:")
    print(f"  checkpoint       {out / 'training' / 'model.pt'}")
    print(f"  metrics, plots   {out / 'training' / 'report'}")
    print(f"  predictions      {predictions}")
    print(f"  maps             {out / 'maps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
