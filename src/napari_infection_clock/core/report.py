"""SPEC 7 figures and the on-disk evaluation report.

Figures use matplotlib's object API only (``Figure``, never pyplot), so they draw the same
headless, in the CLI, and on a napari dock widget's own canvas (pass its ``ax``). Degenerate
data draws a "not enough data" note instead of raising: an evaluation of one mock stack is
a legitimate thing to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .atomic import write_atomic, write_text_atomic
from .information import lacks_information
from .metrics import (
    PER_BIN_COLUMNS,
    evaluate_table,
    metrics_json,
    regression_metrics,
    roc_curve_points,
)
from .targets import CLASS_NAMES, INFECTED, UNINFECTED

_COLOURS = {UNINFECTED: "tab:blue", INFECTED: "tab:red"}


def _axes(ax, figsize=(5.0, 4.5)):
    if ax is not None:
        return ax
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _no_data(ax, why: str):
    ax.text(0.5, 0.5, f"not enough data\n{why}", ha="center", va="center",
            transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def roc_figure(y_true, p_infected, ax=None) -> Figure:
    """ROC curve with its AUC in the legend and the chance diagonal for reference."""
    ax = _axes(ax)
    ax.set_title("ROC (infected vs uninfected)")
    roc = roc_curve_points(y_true, p_infected)
    if not roc["fpr"]:
        return _no_data(ax, "ROC needs both infected and uninfected items")
    from sklearn.metrics import auc  # here: the CLI imports this module also to predict

    fpr, tpr = roc["fpr"], roc["tpr"]
    ax.plot(fpr, tpr, color="tab:red", lw=2, label=f"ROC, AUC = {auc(fpr, tpr):.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
           ylabel="true positive rate", aspect="equal")
    ax.legend(loc="lower right")
    return ax.figure


def confusion_figure(y_true, y_pred, ax=None) -> Figure:
    """2x2 confusion matrix (rows true, columns predicted) with the counts written in."""
    ax = _axes(ax)
    ax.set_title("confusion matrix")
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.size == 0:
        return _no_data(ax, "no labelled items")
    from sklearn.metrics import confusion_matrix

    labels = [UNINFECTED, INFECTED]
    cm = confusion_matrix(y_true.astype(np.int64), y_pred.astype(np.int64), labels=labels)
    ax.imshow(cm, cmap="Blues", vmin=0)
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if dark else "black", fontsize=14)
    names = [CLASS_NAMES[c] for c in labels]
    ax.set_xticks(range(2), names)
    ax.set_yticks(range(2), names)
    ax.set(xlabel="predicted", ylabel="true")
    return ax.figure


def time_scatter_figure(t_true, t_pred, classes=None, ax=None) -> Figure:
    """Predicted vs true hours with the identity and the least-squares line; a slope near 1
    and intercept near 0 mean the clock is unbiased across the time range."""
    ax = _axes(ax, figsize=(5.5, 5.0))
    ax.set_title("predicted vs true time")
    t_true = np.asarray(t_true, dtype=np.float64).ravel()
    t_pred = np.asarray(t_pred, dtype=np.float64).ravel()
    reg = regression_metrics(t_true, t_pred)
    if reg["n"] == 0:
        return _no_data(ax, "no items with a true and a predicted time")
    if classes is None:
        ax.scatter(t_true, t_pred, s=10, alpha=0.5, color="0.3", label=f"items (n={reg['n']})")
    else:
        classes = np.asarray(classes).ravel()
        for c in (UNINFECTED, INFECTED):
            m = classes == c
            if m.any():
                ax.scatter(t_true[m], t_pred[m], s=10, alpha=0.5, color=_COLOURS[c],
                           label=f"true {CLASS_NAMES[c]} (n={int(m.sum())})")
        other = ~np.isin(classes, (UNINFECTED, INFECTED))
        if other.any():
            ax.scatter(t_true[other], t_pred[other], s=10, alpha=0.5, color="0.5",
                       label=f"class unknown (n={int(other.sum())})")
    ok = np.isfinite(t_true) & np.isfinite(t_pred)
    lo = float(min(t_true[ok].min(), t_pred[ok].min()))
    hi = float(max(t_true[ok].max(), t_pred[ok].max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1, label="identity")
    if np.isfinite(reg["slope"]):
        xs = np.array([t_true[ok].min(), t_true[ok].max()])
        r = reg["pearson_r"]
        r_text = f"{r:.3f}" if np.isfinite(r) else "n/a"
        ax.plot(xs, reg["slope"] * xs + reg["intercept"], color="black", lw=1.5,
                label=(f"least squares: slope = {reg['slope']:.3f}, "
                       f"intercept = {reg['intercept']:.2f} h, r = {r_text}"))
    else:
        ax.text(0.02, 0.98, "not enough data for a line fit", transform=ax.transAxes,
                va="top", color="0.3")
    ax.set(xlabel="true time (h)", ylabel="predicted time (h)")
    # below the axes (constrained layout makes room): a legend inside covers points
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize="x-small",
              frameon=False)
    return ax.figure


def per_bin_figure(per_bin: pd.DataFrame, fig: Figure | None = None) -> Figure:
    """Temporal generalisation: MAE (top) and accuracy (bottom) per experiment-time bin.
    ``fig`` (cleared first) lets a widget redraw on its own canvas."""
    if fig is None:
        fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    fig.clear()
    if per_bin is None or len(per_bin) == 0 or not (per_bin["n"] > 0).any():
        return _no_data(fig.add_subplot(), "no items in any time bin")
    ax_mae, ax_acc = fig.subplots(2, 1, sharex=True)
    start = per_bin["bin_start_h"].to_numpy(dtype=np.float64)
    width = per_bin["bin_end_h"].to_numpy(dtype=np.float64) - start
    ax_mae.bar(start, per_bin["mae"].to_numpy(dtype=np.float64), width=width * 0.9,
               align="edge", color="tab:orange")
    ax_mae.set(ylabel="MAE (h)", title="per time bin")
    ax_acc.bar(start, per_bin["accuracy"].to_numpy(dtype=np.float64), width=width * 0.9,
               align="edge", color="tab:green")
    ax_acc.set(ylabel="accuracy", ylim=(0, 1.02), xlabel="experiment time (h)")
    return fig


def reliability_figure(calibration: dict, ax=None) -> Figure:
    """Reliability diagram: observed fraction infected against mean p per bin, for the raw
    and (when present) temperature-scaled probabilities, with their ECE."""
    ax = _axes(ax)
    ax.set_title("reliability (probability calibration)")
    curves = [(k, v) for k, v in calibration.items() if sum(v["count"])]
    if not curves:
        return _no_data(ax, "no labelled item with a probability")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfectly calibrated")
    for (name, curve), colour in zip(curves, ("tab:orange", "tab:green")):
        mean_p = np.asarray(curve["mean_p"], dtype=np.float64)
        frac = np.asarray(curve["fraction_infected"], dtype=np.float64)
        ax.plot(mean_p, frac, "-o", ms=4, color=colour,
                label=f"{name.replace('_', ' ')}, ECE = {curve['ece']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="predicted P(infected)",
           ylabel="observed fraction infected", aspect="equal")
    ax.legend(loc="upper left")
    return ax.figure


def _save_png(fig: Figure, path: Path) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def save_report(df: pd.DataFrame, out_dir, *, bin_hours: float = 6.0,
                threshold: float = 0.5, training: dict | None = None,
                calibration: dict | None = None) -> dict[str, Path]:
    """Evaluate a labelled prediction table and write metrics.json, per_bin.csv and the
    five figures into ``out_dir``; returns {name: path}. ``training`` (how the model was
    chosen, e.g. its best epoch and what picked it) is kept in metrics.json; the model's
    ``calibration`` says how its consistent-clock intervals were made."""
    metrics = evaluate_table(df, bin_hours=bin_hours, threshold=threshold,
                             calibration=calibration)
    df = df[~lacks_information(df)]  # left out of the metrics, so of the figures too
    if training:
        metrics["training"] = training
    bins = pd.DataFrame(metrics["per_bin"], columns=list(PER_BIN_COLUMNS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (
        "metrics.json", "per_bin.csv", "roc.png", "confusion.png", "time_scatter.png",
        "per_bin.png", "reliability.png")}
    write_text_atomic(paths["metrics.json"], metrics_json(metrics))
    write_atomic(paths["per_bin.csv"], lambda tmp: bins.to_csv(tmp, index=False))

    y_true = pd.to_numeric(df["true_class"], errors="coerce").to_numpy(dtype=np.float64)
    p = pd.to_numeric(df["p_infected"], errors="coerce").to_numpy(dtype=np.float64)
    known = np.isfinite(y_true) & np.isfinite(p)
    y_pred = (p[known] >= threshold).astype(np.int64)
    _save_png(roc_figure(y_true, p), paths["roc.png"])
    _save_png(confusion_figure(y_true[known], y_pred), paths["confusion.png"])
    _save_png(time_scatter_figure(df["true_time_h"], df["pred_time_h"], y_true),
              paths["time_scatter.png"])
    _save_png(per_bin_figure(bins), paths["per_bin.png"])
    _save_png(reliability_figure(metrics["overall"]["calibration"]), paths["reliability.png"])
    return paths
