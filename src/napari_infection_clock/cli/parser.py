"""The ``infection-clock`` argument parser: command line -> typed options of a command.

Options that are not given stay out of the namespace (``argparse.SUPPRESS``), so their
defaults come from the option dataclasses alone. The parser imports nothing heavy (no torch,
scipy, pandas or matplotlib): ``--help`` and argument errors answer at once, and a command's
module is imported once the command line has chosen it.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import fields
from pathlib import Path

from .. import __version__
from ..core.choices import ARCHITECTURES, INIT_CHOICES, PRECISIONS
from ..core.recipes import (
    AUGMENTATIONS,
    BEST_METRICS,
    BN_MODES,
    RECIPES,
    SELECTIONS,
    SMOOTHING_WINDOW,
)
from ..core.targets import DEFAULT_CLAMP, DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H
from ..core.tiles import BORDERS, TileSpec
from ..core.train_config import TRAIN_MODES
from .options import (
    CVReportOptions,
    DemoOptions,
    EvaluateOptions,
    MergeOptions,
    PredictOptions,
    SampleOptions,
    TrainOptions,
)

#: command -> (its options, its function as ``module.function`` of this package, imported
#: only when the command runs: ``--help`` and argument errors import no torch)
COMMANDS = {
    "sample": (SampleOptions, "sample.sample"),
    "train": (TrainOptions, "train.train"),
    "predict": (PredictOptions, "predict.predict"),
    "evaluate": (EvaluateOptions, "evaluate.evaluate"),
    "demo": (DemoOptions, "demo.demo"),
    "merge-predictions": (MergeOptions, "predict.merge_predictions"),
    "cv-report": (CVReportOptions, "cv_report.cv_report"),
}


def parse(argv: list[str] | None = None):
    """``(command name, its options, its function)`` from the command line."""
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    options_type, function = COMMANDS[command]
    module, _, name = function.rpartition(".")
    run = getattr(importlib.import_module(f".{module}", __package__), name)
    names = {f.name for f in fields(options_type)}
    return command, options_type(**{k: v for k, v in args.items() if k in names}), run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infection-clock",
        description="Infection state and infection clock from live-cell time-lapse stacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, argument_default=argparse.SUPPRESS)

    p = command("sample", "write the synthetic research-layout dataset")
    p.add_argument("out", type=Path, help="folder to create (gets infected/ and uninfected/)")
    _sample_args(p)

    p = command("train", "train or fine-tune a model; writes a checkpoint and report")
    p.add_argument(
        "data",
        type=Path,
        help="research folder (ROOT/infected, ROOT/uninfected) or a label table CSV",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _train_args(p)

    p = command("predict", "predict stacks with a checkpoint; writes a CSV table")
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
    p.add_argument(
        "--shard",
        help="I/N: predict every N-th stack from the I-th (0-based) into OUT.parts; the last "
        "shard merges. Also from torchrun (RANK/WORLD_SIZE) or SLURM_ARRAY_TASK_ID/COUNT; "
        "--shard 0/1 predicts all stacks in an array job whose tasks do other plates",
    )

    p = command("evaluate", "metrics, per-bin table and plots on labelled data")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("data", type=Path, help="research folder or label table CSV")
    p.add_argument("--out", type=Path, required=True, help="output folder for the report")
    p.add_argument("--bin-hours", type=float, help="time bin width (default 6 h)")
    _policy_args(p)
    _tile_args(p)
    _run_args(p)

    p = command("merge-predictions", "combine the finished parts of a sharded predict run")
    p.add_argument("out", type=Path, help="the --out of the sharded predict run")

    p = command("cv-report", "merge the held-out reports of CV folds: mean ± sd per metric")
    p.add_argument(
        "runs", type=Path, nargs="+", help="the --out folders of the folds (or metrics.json files)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder (or .csv) for cv_summary.csv")

    p = command("demo", "the whole loop on synthetic data on a CPU in a few minutes")
    p.add_argument("--out", type=Path, help="output folder (default infection-clock-demo)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--arch", choices=ARCHITECTURES)
    p.add_argument("--image-size", type=int)
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    return parser


def _sample_args(p):
    p.add_argument("--n-infected", type=int)
    p.add_argument("--n-mock", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--onset", type=float, help="infection onset in hours")
    p.add_argument("--interval", type=positive_hours, help="frame interval in hours")
    p.add_argument("--seed", type=int)


def positive_hours(text: str) -> float:
    """argparse type: a positive number of hours (argparse names the flag in its message)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of hours, got {text!r}")
    return value


def _stack_args(p):
    p.add_argument("--axes", help="axes of the TIFF, e.g. TYX or TCYX (default: from metadata)")
    p.add_argument(
        "--force-axes",
        action="store_true",
        help="use --axes even where they contradict the axes the file's metadata names",
    )
    _channel_arg(p)
    p.add_argument(
        "--interval",
        type=positive_hours,
        help="frame interval in hours (default: metadata, else checkpoint)",
    )


def _channel_arg(p):
    p.add_argument(
        "--channel",
        help="channel of multichannel stacks, by index or name (e.g. 2 or DAPI; names come "
        "from the file's ImageJ/OME metadata or LUT colours); required for such stacks",
    )


def _tile_args(p):
    p.add_argument("--tile-size", type=int, help="tile size in pixels (default: whole frames; "
                   "a model trained with --native-tiles: its tiles)")
    p.add_argument("--stride", type=int, help="tile stride in pixels (default: tile size)")
    p.add_argument(
        "--border",
        choices=BORDERS,
        help=f"tiles at the frame edge (default {TileSpec.border}: the last tile moves back "
        "inside the frame; pad makes up the pixels past the edge by reflection, and the "
        "table marks those tiles padded; drop leaves the edge out)",
    )


def _run_args(p):
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--batch-size", type=int, help="items per forward pass (default: 4 on CPU, 16 on GPU)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto: fp32 on CPU, fp16 backbone on CUDA (heads always fp32); bf16 is faster "
        "on CPU but less exact (README)",
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
        metavar=("FROM", "TO"),
        help="hours of infected stacks to use",
    )
    p.add_argument(
        "--uninfected-window",
        type=float,
        nargs=2,
        metavar=("FROM", "TO"),
        help="hours of mock stacks to use",
    )
    p.add_argument("--stride-frames", type=int, help="take every Nth frame")
    _channel_arg(p)


def _train_args(p):
    _policy_args(p)
    _tile_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, help="start from this checkpoint (ours or research)")
    g.add_argument("--arch", choices=ARCHITECTURES, help="default resnet50")
    g.add_argument(
        "--init", choices=INIT_CHOICES, help="backbone initialisation without --checkpoint"
    )
    g.add_argument("--hidden-dim", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--cls-conditioning", action="store_true")
    g.add_argument("--image-size", type=int)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument(
        "--batch-size",
        type=int,
        help="the global batch: under torchrun split evenly over the processes (default 32)",
    )
    g.add_argument("--lr", type=float, help="learning rate for the global batch (default: the "
                   "recipe's, else 1e-4)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--cls-weight", type=float)
    g.add_argument("--reg-weight", type=float)
    g.add_argument("--mode", choices=TRAIN_MODES, help="full fine-tune or heads only")
    g.add_argument("--best-metric", choices=tuple(BEST_METRICS),
                   help="validation metric that picks the best epoch (default: the recipe's, "
                   "else roc_auc)")
    g.add_argument("--val-fraction", type=float)
    g.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation by well: train on k-1 folds, validate and report on one",
    )
    g.add_argument("--fold", type=int, help="which fold to hold out (0-based)")
    g.add_argument("--test-fraction", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--device")
    _recipe_args(p)
    g = p.add_argument_group("several processes and restarts (see docs/cluster.md)")
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: BatchNorm statistics over the global batch, not per process",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run state in --out (run_state.pt, saved every epoch); without one, "
        "start afresh, so one command serves the first start and every restart",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="start again, replacing a run state in --out"
    )


def _recipe_args(p):
    g = p.add_argument_group(
        "recipe (docs/quality.md)", "a named preset of the options below; each option given "
        "overrides the preset's value")
    g.add_argument(
        "--recipe", choices=tuple(RECIPES),
        help="research (default): the research pipeline's recipe, SPEC 5-6; clock: lr 1e-3, "
        "best epoch by validation loss, microscopy augmentation and EMA 0.999, what held "
        "best on wells the model never saw (docs/quality.md)")
    g.add_argument(
        "--augment", choices=AUGMENTATIONS,
        help="spec: flips and rotation (SPEC 5); microscopy: also intensity gain/offset, "
        "contrast, gamma, blur, noise and scale jitter; none")
    g.add_argument("--no-augment", action="store_true", help="the same as --augment none")
    g.add_argument(
        "--bf16-train", action=argparse.BooleanOptionalAction,
        help="bf16 autocast for the backbone (CUDA, or a CPU with AVX-512 BF16/AMX); heads and "
        "losses stay fp32")
    g.add_argument(
        "--native-tiles", type=int, metavar="SIZE",
        help="train on SIZE px tiles cut from the full-resolution frames (each with its "
        "frame's label and time; no resizing); predict and evaluate then use SIZE px tiles, and "
        "fine-tuning from it keeps them")
    g.add_argument(
        "--warmup-epochs", type=int, metavar="N",
        help="linear learning-rate warm-up over N epochs (per step), then cosine annealing")
    g.add_argument(
        "--balanced", action=argparse.BooleanOptionalAction,
        help="sample items evenly over class and 6 h time bin (with replacement)")
    g.add_argument(
        "--ema", type=float, metavar="DECAY",
        help="validate and save an exponential moving average of the weights (per step, "
        "e.g. 0.99; 0 turns it off)")
    g.add_argument(
        "--bn", choices=BN_MODES,
        help="batch: BatchNorm learns from each batch; frozen: running statistics fixed "
        "(small batches, fine-tuning)")
    g.add_argument(
        "--select", choices=SELECTIONS,
        help=f"best: the best validated epoch; smoothed: the best mean over {SMOOTHING_WINDOW} "
        "neighbouring epochs (not one lucky epoch)")
