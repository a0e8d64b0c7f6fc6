"""Quality on wells the model never saw, from a shifted configuration (issue 12); prints
one markdown report and writes one JSON result per run, for an ablation table.

Train with the CLI (``infection-clock train``, from random weights, on this machine's
CPU) on wells of the demo's synthetic configuration, for a fixed number of epochs (the
comparison does not depend on machine load) capped by a wall-clock budget; then
``infection-clock evaluate`` on wells of a shifted configuration: other cell density,
cell size, contrast, an illumination ramp, more camera noise, slower infection, another
frame interval and onset. Printed: ROC AUC, accuracy, per-class MAE (raw and consistent
clock), slope and intercept, MAE per time bin, the coverage of the 90 % intervals and the
probability calibration error (ECE, raw and temperature-scaled), with the issue's targets.

Training options go through to ``infection-clock train`` unchanged: ``--train-arg=--ema=0.999``
(repeatable) or everything after ``--``. ``--table DIR`` turns a folder of results into the
ablation table.

Usage::

    python benchmarks/quality.py                      # the issue's setting
    python benchmarks/quality.py --small              # a smoke run of the same pipeline
    python benchmarks/quality.py --epochs 4 --tag ema --results /tmp/ablation -- --ema 0.999
    python benchmarks/quality.py --table /tmp/ablation    # the markdown ablation table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# pandas, torch and the plugin are imported where a run needs them: --table reads JSON only.

#: The shifted test configuration (the training one is the generator's default).
SHIFT = {"density": 1.4, "cell_scale": 0.85, "contrast": 0.8, "illumination": 0.15,
         "noise": 0.02, "latency_scale": 1.6}
SHIFT_INTERVAL_H, SHIFT_ONSET_H = 0.75, 2.0
TARGETS = {"roc_auc": ">= 0.99", "infected consistent MAE": "<= 1.0 h",
           "infected per-frame MAE": "<= 2.0 h", "slope": "1 +/- 0.1",
           "90 % interval coverage": "88-92 %"}


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny sizes: checks the pipeline only")
    p.add_argument("--out", type=Path, help="keep data, checkpoint and report here")
    p.add_argument("--data", type=Path,
                   help="generate the wells here once and reuse them in later runs")
    p.add_argument("--budget-min", type=float, default=15.0,
                   help="wall-clock cap on training; a run stopped by it says so")
    p.add_argument("--epochs", type=int, default=6, help="the fixed training length")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--size", type=int, default=128, help="synthetic frame side (pixels)")
    p.add_argument("--frames", type=int, default=96, help="frames per training well")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic wells")
    p.add_argument("--wells", type=int, default=4,
                   help="training-configuration wells per class (train and validation)")
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="of those wells, the share kept for validation (and calibration)")
    p.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                   help="passed to infection-clock train, e.g. --train-arg=--ema=0.999")
    p.add_argument("--tag", help="the run's name in the results (default: its train options)")
    p.add_argument("--results", type=Path, help="write the run's result as TAG.json here")
    p.add_argument("--table", type=Path, metavar="DIR",
                   help="print the ablation table of the results in DIR and stop")
    args = p.parse_args(argv)
    args.train_args = [*args.train_arg, *passed]
    args.tag = args.tag or (" ".join(args.train_args) or "baseline")
    if args.small:
        args.epochs, args.image_size, args.size, args.frames = 1, 32, 48, 24
        args.budget_min = min(args.budget_min, 10.0)
    return args


def cli(*argv: str, timeout: float | None = None, log: Path | None = None) -> float:
    """Run the console script as a user would; returns its wall time in seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "napari_infection_clock", *argv]
    with open(log or os.devnull, "a") as out:
        subprocess.run(cmd, check=True, timeout=timeout, stdout=out)
    return time.perf_counter() - start


class LoadSampler:
    """The 1-minute load average, sampled while training runs (say it next to speeds)."""

    def __init__(self, every_s: float = 10.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s):
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = np.asarray(self.samples)
        return {"mean": float(s.mean()), "min": float(s.min()), "max": float(s.max())}


def train_within_budget(train: Path, run: Path, args) -> dict:
    """Train with the CLI for ``--epochs``, stopped at ``--budget-min`` at the latest.

    At the budget the run is stopped and the best checkpoint written so far (one per
    improving epoch) is the one evaluated; with none yet there is nothing to report.
    """
    import pandas as pd

    from napari_infection_clock.core.checkpoint import load_checkpoint

    budget_s = args.budget_min * 60
    start = time.perf_counter()
    stopped = False
    with LoadSampler() as load:
        try:
            cli("train", str(train), "--out", str(run), "--arch", args.arch,
                "--init", "random", "--image-size", str(args.image_size),
                "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                "--device", "cpu", "--val-fraction", str(args.val_fraction), "--test-fraction", "0",
                "--seed", str(args.seed), *args.train_args,
                timeout=budget_s, log=run.parent / "train.log")
        except subprocess.TimeoutExpired:
            if not (run / "model.pt").is_file():
                raise SystemExit(
                    f"quality: no epoch finished within the {args.budget_min:g} min budget, so "
                    "there is no model to evaluate; raise --budget-min or lower --frames / "
                    "--image-size.") from None
            stopped = True
    seconds = budget_s if stopped else time.perf_counter() - start
    meta = load_checkpoint(run / "model.pt")[1]
    history = [{k: _plain(v) for k, v in row.items()} for row in meta.history]
    n_train = int((pd.read_csv(run / "splits.csv")["split"] == "train").sum())
    done = len(history)
    epoch_s = history[-1]["seconds"] if history else float("nan")
    return {
        "seconds": seconds, "stopped_at_budget": stopped, "epochs_done": done,
        "best_epoch": meta.epoch, "best_epoch_by": meta.best_epoch_by,
        "train_items": n_train, "load": load.summary(),
        # Training items per second of the epochs' wall time (validation included).
        "images_per_s": n_train * done / epoch_s if done else None,
        "recipe": getattr(meta, "recipe", None), "history": history,
    }


def make_data(root: Path, args) -> tuple[Path, Path]:
    """The training wells (default configuration) and the shifted test wells, made once."""
    from napari_infection_clock.core.synthetic import write_research_dataset

    train, test = root / "train", root / "shifted"
    wanted = {k: getattr(args, k) for k in ("small", "size", "frames", "data_seed")}
    if args.wells != 4:  # folders made before --wells existed hold 4
        wanted["wells"] = args.wells
    if (root / "done").is_file():
        made = json.loads((root / "done").read_text())
        if made != wanted:
            raise SystemExit(f"{root} holds wells made with {made}, not {wanted}: "
                             "give another --data folder")
        return train, test
    n_train, n_test = (2, 1) if args.small else (args.wells, 2)
    write_research_dataset(train, n_infected=n_train, n_mock=n_train, n_frames=args.frames,
                           size=args.size, seed=args.data_seed)
    test_frames = int(round(args.frames * 0.5 / SHIFT_INTERVAL_H))  # the same hours
    write_research_dataset(test, n_infected=n_test, n_mock=n_test, n_frames=test_frames,
                           size=args.size, seed=args.data_seed + 1000,
                           frame_interval_h=SHIFT_INTERVAL_H, onset_h=SHIFT_ONSET_H, **SHIFT)
    (root / "done").write_text(json.dumps(wanted))
    return train, test


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def fmt(v, digits=3, unit=""):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else \
        f"{v:.{digits}f}{unit}"


def summarize(metrics: dict, predictions) -> dict:
    """The numbers issue 12 names, from evaluate's metrics.json and predictions.csv."""
    o, pc = metrics["overall"], metrics["per_class"]
    interval = lambda block, key: (block.get("interval") or {}).get(key)  # noqa: E731
    out = {"roc_auc": o["classification"]["roc_auc"],
           "accuracy": o["classification"]["accuracy"],
           "ece_raw": o["calibration"]["raw"]["ece"],
           "ece_scaled": o["calibration"].get("temperature_scaled", {}).get("ece"),
           "n_items": len(predictions),
           "n_out_of_distribution": int(predictions["out_of_distribution"].sum())
           if "out_of_distribution" in predictions else None}
    for name, key in (("infected", "infected"), ("mock", "uninfected")):
        for block in ("regression", "consistent"):
            b = pc[key][block]
            short = "raw" if block == "regression" else "consistent"
            out[f"{name}_{short}"] = {"mae": b["mae"], "slope": b.get("slope"),
                                      "intercept": b.get("intercept"),
                                      "coverage": interval(b, "coverage"),
                                      "width": interval(b, "mean_width_h"),
                                      "note": interval(b, "note")}
    infected = predictions[predictions["true_class"] == 1]
    width = metrics["bin_hours"]
    bins = (infected["hours"] // width) * width
    out["per_bin"] = [
        {"from_h": float(start), "to_h": float(start + width), "n": len(part),
         "raw_mae": float(np.mean(np.abs(part["pred_time_h"] - part["true_time_h"]))),
         "consistent_mae": float(np.mean(np.abs(part["consistent_time_h"] - part["true_time_h"])))}
        for start, part in infected.groupby(bins)]
    return out


def how_made(block: dict) -> str:
    """What evaluate said of a class's consistent intervals (n/a: a run from before it said)."""
    note = block.get("note")
    return "n/a" if note is None else note or "calibrated over regions"


def report(result: dict) -> str:
    s, tr, a = result["summary"], result["training"], result["args"]
    inf_r, inf_c, mock_r, mock_c = (s["infected_raw"], s["infected_consistent"],
                                    s["mock_raw"], s["mock_consistent"])
    trained = (f"stopped at the budget after {tr['epochs_done']} of {a['epochs']} epochs"
               if tr["stopped_at_budget"] else f"{tr['epochs_done']} epochs")
    rows = [
        ("run", f"{result['tag']} (train options: {' '.join(a['train_args']) or 'none'})"),
        ("training (CLI, CPU)", f"{tr['seconds'] / 60:.1f} min, {trained}, best epoch "
                                f"{tr['best_epoch']} by {tr['best_epoch_by']}, {a['arch']}, "
                                f"{a['image_size']} px, random init, seed {a['seed']}"),
        ("training speed", f"{fmt(tr['images_per_s'], 1)} images/s over {tr['train_items']} "
                           f"items (validation included); load average {tr['load']['mean']:.1f} "
                           f"({tr['load']['min']:.1f}-{tr['load']['max']:.1f}) on "
                           f"{os.cpu_count()} CPUs"),
        ("ROC AUC", fmt(s["roc_auc"])),
        ("accuracy", fmt(s["accuracy"])),
        ("infected MAE: per frame / consistent",
         f"{fmt(inf_r['mae'], 2, ' h')} / {fmt(inf_c['mae'], 2, ' h')}"),
        ("mock MAE: per frame / consistent",
         f"{fmt(mock_r['mae'], 2, ' h')} / {fmt(mock_c['mae'], 2, ' h')}"),
        ("infected slope / intercept, per frame",
         f"{fmt(inf_r['slope'], 2)} / {fmt(inf_r['intercept'], 2, ' h')}"),
        ("infected slope / intercept, consistent",
         f"{fmt(inf_c['slope'], 2)} / {fmt(inf_c['intercept'], 2, ' h')}"),
        ("90 % interval coverage, per frame (infected / mock)",
         f"{fmt(inf_r['coverage'], 3)} / {fmt(mock_r['coverage'], 3)}"),
        ("90 % interval coverage, consistent (infected / mock)",
         f"{fmt(inf_c['coverage'], 3)} / {fmt(mock_c['coverage'], 3)}"),
        ("90 % interval mean width, per frame / consistent (infected)",
         f"{fmt(inf_r.get('width'), 2, ' h')} / {fmt(inf_c.get('width'), 2, ' h')}"),
        ("consistent intervals (infected / mock)", f"{how_made(inf_c)} / {how_made(mock_c)}"),
        ("ECE raw / temperature-scaled", f"{fmt(s['ece_raw'])} / {fmt(s['ece_scaled'])}"),
        ("items flagged out of distribution", f"{s['n_out_of_distribution']} of {s['n_items']}"),
    ]
    lines = ["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", "Per time bin, infected wells (MAE, hours):", "",
              "| hours | n | per frame | consistent |", "| --- | --- | --- | --- |"]
    lines += [f"| {b['from_h']:g}-{b['to_h']:g} | {b['n']} | {b['raw_mae']:.2f} | "
              f"{b['consistent_mae']:.2f} |" for b in s["per_bin"]]
    lines += ["", "Validation per epoch (in-distribution wells):", "",
              "| epoch | val AUC | val MAE (h) | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {h['epoch']} | {fmt(h.get('val_roc_auc'))} | {fmt(h.get('val_mae'), 2)} | "
              f"{h['seconds']:.0f} |" for h in tr["history"]]
    lines += ["", "Targets (issue 12): " + "; ".join(f"{k} {v}" for k, v in TARGETS.items())]
    return "\n".join(lines)


def ablation_table(results: list[dict]) -> str:
    """One markdown row per run, the baseline (or research) first: issue 12's ablation table."""
    head = ["option(s)", "epochs (best)", "seed", "AUC", "accuracy", "infected MAE raw / consistent",
            "mock MAE raw / consistent", "slope / intercept h: raw; consistent",
            "coverage infected raw / consistent", "ECE raw / scaled", "training", "img/s",
            "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    first = ("baseline", "research")
    for r in sorted(results, key=lambda r: (r["tag"] not in first, r["tag"], r["args"]["seed"])):
        s, tr = r["summary"], r["training"]
        ir, ic, mr, mc = (s["infected_raw"], s["infected_consistent"], s["mock_raw"],
                          s["mock_consistent"])
        epochs = f"{tr['epochs_done']}{'*' if tr['stopped_at_budget'] else ''} ({tr['best_epoch']})"
        cells = [r["tag"], epochs, str(r["args"]["seed"]), fmt(s["roc_auc"]), fmt(s["accuracy"]),
                 f"{fmt(ir['mae'], 2)} / {fmt(ic['mae'], 2)}",
                 f"{fmt(mr['mae'], 2)} / {fmt(mc['mae'], 2)}",
                 f"{fmt(ir['slope'], 2)} / {fmt(ir['intercept'], 1)}; "
                 f"{fmt(ic['slope'], 2)} / {fmt(ic['intercept'], 1)}",
                 f"{fmt(ir['coverage'], 2)} / {fmt(ic['coverage'], 2)}",
                 f"{fmt(s['ece_raw'])} / {fmt(s['ece_scaled'])}",
                 f"{tr['seconds'] / 60:.1f} min", fmt(tr["images_per_s"], 1),
                 f"{tr['load']['mean']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "MAE in hours on the shifted test wells; * stopped by the wall-clock budget; "
                  "img/s: training items per second of training wall time, validation "
                  "included; load: mean 1-minute load average while training."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.table:
        results = [json.loads(p.read_text()) for p in sorted(args.table.glob("*.json"))]
        if not results:
            raise SystemExit(f"quality: no results (*.json) in {args.table}")
        print(ablation_table(results))
        return 0
    import pandas as pd

    from napari_infection_clock.core.atomic import write_atomic

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        train, test = make_data(args.data or root, args)
        run = root / "run"
        training = train_within_budget(train, run, args)
        evaluation = root / "evaluation"
        cli("evaluate", str(run / "model.pt"), str(test), "--out", str(evaluation),
            "--device", "cpu", "--onset", str(SHIFT_ONSET_H),
            "--frames-per-hour", str(1 / SHIFT_INTERVAL_H), "--bin-hours", "6")
        metrics = json.loads((evaluation / "metrics.json").read_text())
        predictions = pd.read_csv(evaluation / "predictions.csv")
        result = {"tag": args.tag, "args": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(args).items()},
                  "training": training, "summary": summarize(metrics, predictions),
                  "shift": SHIFT, "cpus": os.cpu_count()}
        text = json.dumps(result, indent=1, allow_nan=True)
        for folder in (args.results, args.out):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                name = "result.json" if folder == args.out else f"{_filename(args)}.json"
                write_atomic(folder / name, lambda tmp: Path(tmp).write_text(text))
        print(f"quality on a shifted configuration ({os.cpu_count()} CPUs here; shift {SHIFT}, "
              f"frame interval {SHIFT_INTERVAL_H} h, onset {SHIFT_ONSET_H} h)\n")
        print(report(result))
    return 0


def _filename(args) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in args.tag)
    return f"{safe}_s{args.seed}"


if __name__ == "__main__":
    sys.exit(main())
