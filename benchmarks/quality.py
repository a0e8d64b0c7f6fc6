"""Quality on wells the model never saw, from a shifted configuration (issue 12); prints
one markdown report.

Train with the CLI (``infection-clock train``, from random weights, on this machine's
CPU) on wells of the demo's synthetic configuration, within a wall-clock budget; then
``infection-clock evaluate`` on wells of a shifted configuration: other cell density,
cell size, contrast, an illumination ramp, more camera noise, slower infection, another
frame interval and onset. Printed: ROC AUC, accuracy, per-class MAE (raw and consistent
clock), slope and intercept, MAE per time bin, the coverage of the 90 % intervals and the
probability calibration error (ECE, raw and temperature-scaled), with the issue's targets.

Usage::

    python benchmarks/quality.py                      # the issue's setting (about 15 min)
    python benchmarks/quality.py --small              # a smoke run of the same pipeline
    python benchmarks/quality.py --epochs 8 --budget-min 15 --out /tmp/quality
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_infection_clock.core.checkpoint import load_checkpoint
from napari_infection_clock.core.synthetic import write_research_dataset

#: The shifted test configuration (the training one is the generator's default).
SHIFT = {"density": 1.4, "cell_scale": 0.85, "contrast": 0.8, "illumination": 0.15,
         "noise": 0.02, "latency_scale": 1.6}
SHIFT_INTERVAL_H, SHIFT_ONSET_H = 0.75, 2.0
TARGETS = {"roc_auc": ">= 0.99", "infected consistent MAE": "<= 1.0 h",
           "infected per-frame MAE": "<= 2.0 h", "slope": "1 +/- 0.1",
           "90 % interval coverage": "88-92 %"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny sizes: checks the pipeline only")
    p.add_argument("--out", type=Path, help="keep data, checkpoint and report here")
    p.add_argument("--budget-min", type=float, default=15.0, help="training wall-clock budget")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--size", type=int, default=128, help="synthetic frame side (pixels)")
    p.add_argument("--frames", type=int, default=96, help="frames per training well")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.small:
        args.epochs, args.image_size, args.size, args.frames = 1, 32, 48, 24
        args.budget_min = min(args.budget_min, 10.0)
    return args


def cli(*argv: str, timeout: float | None = None) -> float:
    """Run the console script as a user would; returns its wall time in seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "napari_infection_clock", *argv]
    subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def train_within_budget(train: Path, run: Path, args) -> tuple[float, str]:
    """Train with the CLI for at most ``--budget-min``; returns the wall time and what ran.

    At the budget the run is stopped and the best checkpoint written so far (one per
    improving epoch) is the one evaluated; with none yet there is nothing to report.
    """
    budget_s = args.budget_min * 60
    start = time.perf_counter()
    try:
        cli("train", str(train), "--out", str(run), "--arch", args.arch,
            "--init", "random", "--image-size", str(args.image_size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--device", "cpu", "--val-fraction", "0.25", "--test-fraction", "0",
            "--seed", str(args.seed), timeout=budget_s)
        return time.perf_counter() - start, f"{args.epochs} epochs"
    except subprocess.TimeoutExpired:
        if not (run / "model.pt").is_file():
            raise SystemExit(f"quality: no epoch finished within the {args.budget_min:g} min "
                             "budget, so there is no model to evaluate; raise --budget-min "
                             "or lower --frames / --image-size.") from None
        epoch = load_checkpoint(run / "model.pt")[1].epoch
        return budget_s, f"stopped at the budget; best of the epochs done (epoch {epoch})"


def make_data(root: Path, args) -> tuple[Path, Path]:
    train, test = root / "train", root / "shifted"
    n_train, n_test = (2, 1) if args.small else (4, 2)
    write_research_dataset(train, n_infected=n_train, n_mock=n_train, n_frames=args.frames,
                           size=args.size, seed=args.seed)
    test_frames = int(round(args.frames * 0.5 / SHIFT_INTERVAL_H))  # the same hours
    write_research_dataset(test, n_infected=n_test, n_mock=n_test, n_frames=test_frames,
                           size=args.size, seed=args.seed + 1000,
                           frame_interval_h=SHIFT_INTERVAL_H, onset_h=SHIFT_ONSET_H, **SHIFT)
    return train, test


def fmt(v, digits=3, unit=""):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else \
        f"{v:.{digits}f}{unit}"


def report(metrics: dict, predictions: pd.DataFrame, train_s: float, trained: str,
           args) -> str:
    o, pc = metrics["overall"], metrics["per_class"]
    cls = o["classification"]
    inf, mock = pc["infected"], pc["uninfected"]
    cov = lambda block: (block.get("interval") or {}).get("coverage")  # noqa: E731
    rows = [
        ("training (CLI, CPU)", f"{train_s / 60:.1f} min, {trained}, {args.arch}, "
                                f"{args.image_size} px, random init"),
        ("ROC AUC", fmt(cls["roc_auc"])),
        ("accuracy", fmt(cls["accuracy"])),
        ("infected MAE: per frame / consistent", f"{fmt(inf['regression']['mae'], 2, ' h')} / "
                                                 f"{fmt(inf['consistent']['mae'], 2, ' h')}"),
        ("mock MAE: per frame / consistent", f"{fmt(mock['regression']['mae'], 2, ' h')} / "
                                             f"{fmt(mock['consistent']['mae'], 2, ' h')}"),
        ("infected slope / intercept, per frame", f"{fmt(inf['regression']['slope'], 2)} / "
                                                  f"{fmt(inf['regression']['intercept'], 2, ' h')}"),
        ("infected slope / intercept, consistent", f"{fmt(inf['consistent']['slope'], 2)} / "
                                                   f"{fmt(inf['consistent']['intercept'], 2, ' h')}"),
        ("90 % interval coverage, per frame (infected / mock)",
         f"{fmt(cov(inf['regression']), 3)} / {fmt(cov(mock['regression']), 3)}"),
        ("90 % interval coverage, consistent (infected / mock)",
         f"{fmt(cov(inf['consistent']), 3)} / {fmt(cov(mock['consistent']), 3)}"),
        ("ECE raw / temperature-scaled", f"{fmt(o['calibration']['raw']['ece'])} / "
         f"{fmt(o['calibration'].get('temperature_scaled', {}).get('ece'))}"),
        ("items flagged out of distribution",
         f"{int(predictions['out_of_distribution'].sum()) if 'out_of_distribution' in predictions else 'n/a'}"
         f" of {len(predictions)}"),
    ]
    lines = ["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", "Per time bin, infected wells (MAE, hours):", "",
              "| hours | n | per frame | consistent |", "| --- | --- | --- | --- |"]
    infected = predictions[predictions["true_class"] == 1]
    bins = (infected["hours"] // metrics["bin_hours"]) * metrics["bin_hours"]
    for start, part in infected.groupby(bins):
        raw = np.mean(np.abs(part["pred_time_h"] - part["true_time_h"]))
        cons = np.mean(np.abs(part["consistent_time_h"] - part["true_time_h"]))
        lines.append(f"| {start:g}-{start + metrics['bin_hours']:g} | {len(part)} | "
                     f"{raw:.2f} | {cons:.2f} |")
    lines += ["", "Targets (issue 12): " + "; ".join(f"{k} {v}" for k, v in TARGETS.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        train, test = make_data(root, args)
        run = root / "run"
        train_s, trained = train_within_budget(train, run, args)
        evaluation = root / "evaluation"
        cli("evaluate", str(run / "model.pt"), str(test), "--out", str(evaluation),
            "--device", "cpu", "--onset", str(SHIFT_ONSET_H),
            "--frames-per-hour", str(1 / SHIFT_INTERVAL_H), "--bin-hours", "6")
        metrics = json.loads((evaluation / "metrics.json").read_text())
        predictions = pd.read_csv(evaluation / "predictions.csv")
        print(f"quality on a shifted configuration ({os.cpu_count()} CPUs here; shift {SHIFT}, "
              f"frame interval {SHIFT_INTERVAL_H} h, onset {SHIFT_ONSET_H} h)\n")
        print(report(metrics, predictions, train_s, trained, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
