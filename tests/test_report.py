from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from napari_infection_clock.core.report import (
    confusion_figure,
    per_bin_figure,
    roc_figure,
    save_report,
    time_scatter_figure,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")
FILES = ("metrics.json", "per_bin.csv", "roc.png", "confusion.png", "time_scatter.png", "per_bin.png",
         "reliability.png")


def labelled_table(n=60, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = rng.uniform(0, 30, n)
    true_class = rng.integers(0, 2, n)
    true_t = np.where(true_class == 1, np.maximum(hours - 1, 0), hours)
    return pd.DataFrame({
        "stack": "s", "frame": np.arange(n), "hours": hours,
        "p_infected": np.clip(true_class * 0.7 + rng.uniform(0, 0.3, n), 0, 1),
        "pred_time_h": true_t + rng.normal(0, 1, n),
        "true_class": true_class, "true_time_h": true_t,
    })


def all_text(fig: Figure) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_save_report_writes_valid_files(tmp_path):
    df = labelled_table()
    paths = save_report(df, tmp_path / "out", bin_hours=6.0)
    assert set(paths) == set(FILES)
    for name in FILES:
        assert paths[name] == tmp_path / "out" / name and paths[name].is_file()
    for name in FILES:
        if name.endswith(".png"):
            img = imread(paths[name])
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    metrics = json.loads(paths["metrics.json"].read_text())
    assert metrics["overall"]["classification"]["n"] == len(df)
    bins = pd.read_csv(paths["per_bin.csv"])
    assert list(bins["bin_start_h"]) == [0.0, 6.0, 12.0, 18.0, 24.0]
    assert bins["n"].sum() == len(df)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name not in FILES]  # no temp files


def test_save_report_rejects_unlabelled_before_writing(tmp_path):
    df = labelled_table().drop(columns=["true_class"])
    with pytest.raises(ValueError, match="true_class"):
        save_report(df, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_report_degenerate_table(tmp_path):
    df = labelled_table()
    paths = save_report(df.iloc[:0], tmp_path / "empty")
    assert all(p.is_file() for p in paths.values())
    paths = save_report(df.assign(true_class=0), tmp_path / "oneclass")
    assert json.loads(paths["metrics.json"].read_text())["overall"]["classification"]["roc_auc"] is None


def test_scatter_legend_has_fit():
    x = np.arange(10.0)
    fig = time_scatter_figure(x, 2 * x + 1, classes=np.array([0, 1] * 5))
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "slope = 2.000" in legend
    assert "intercept = 1.00" in legend
    assert "r = 1.000" in legend
    assert "true infected (n=5)" in legend and "true uninfected (n=5)" in legend


def test_roc_legend_has_auc_and_draws_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    out = roc_figure([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], ax=ax)
    assert out is fig
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "AUC = 0.7500" in legend and "chance" in legend


def test_confusion_counts_and_names():
    fig = confusion_figure([0, 0, 0, 1, 1], [0, 1, 0, 1, 1])
    ax = fig.axes[0]
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == ["0", "1", "2", "2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["uninfected", "infected"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: roc_figure([1, 1], [0.2, 0.9]),
        lambda: roc_figure([], []),
        lambda: confusion_figure([], []),
        lambda: time_scatter_figure([], []),
        lambda: per_bin_figure(pd.DataFrame()),
    ],
)
def test_degenerate_input_says_not_enough_data(make):
    fig = make()
    assert isinstance(fig, Figure)
    assert "not enough data" in all_text(fig)


def test_single_point_scatter_has_no_fit_line():
    fig = time_scatter_figure([3.0], [4.0])
    assert "not enough data for a line fit" in all_text(fig)


def test_report_does_not_import_pyplot():
    code = (
        "import sys, napari_infection_clock.core.report as r, pandas as pd;"
        "r.per_bin_figure(pd.DataFrame());"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC})
