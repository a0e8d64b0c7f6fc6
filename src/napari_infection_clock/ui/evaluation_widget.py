"""Dock widget: SPEC 7 evaluation of the session model on labelled items.

Predicts the validation items of the last training run (or every labelled frame and crop)
in a worker, then shows the metrics table, ROC curve, confusion matrix, predicted-vs-true
time scatter with its least-squares line, and per-time-bin metrics, drawn by
:mod:`..core.report` on this dock's canvases. Export writes the same report as the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QWidget,
)

from ..core.atomic import OutputNotWritable
from ..core.calibration import finish_table
from ..core.information import lacks_information
from ..core.items import label_table_items, on_tiles
from ..core.metrics import evaluate_table, per_bin_table
from ..core.recipes import native_tiles_of
from ..core.report import (
    confusion_figure,
    per_bin_figure,
    roc_figure,
    save_report,
    time_scatter_figure,
)
from ..core.tiles import TileSpec
from . import torch_ahead
from .docking import place_form
from .figures import DockedFigure
from .messages import answered_in_view, fit_messages, short, show
from .scrolling import scrolling_layout
from .state import session_for
from .workers import Batch, Progress, Result, Run, Stop

SOURCES = ("validation items of the last training", "all labelled frames and crops")



@dataclass
class Evaluation:
    """A finished evaluation: the labelled prediction table, its metrics, and the model's
    calibration (which says how its intervals were made)."""

    table: pd.DataFrame
    metrics: dict
    per_bin: pd.DataFrame
    calibration: dict


def _evaluate(stop: Stop, model, meta, items, bin_hours: float):
    """Run body: predict the items (the predictor leaves the session's model as it is),
    finish the table like the CLI (the regions' clocks, the model's calibrated answers:
    core.calibration.finish_table), then compute the metrics here, off the GUI thread."""
    from ..core.evaluation import predict_items
    from ..core.predictor import Predictor

    predictor = Predictor(model, meta, device="auto", batch_size=None)
    tables = []
    for table in predict_items(predictor, items):
        if stop():
            return
        tables.append(table)
        yield Progress(sum(len(t) for t in tables), len(items), "predicting")
    if not tables:
        return
    table = finish_table(pd.concat(tables, ignore_index=True), meta)
    metrics = evaluate_table(table, bin_hours=bin_hours, calibration=meta.calibration)
    yield Result(Evaluation(table, metrics, per_bin_table(table[~lacks_information(table)],
                                                          bin_hours), meta.calibration))


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) rows of the overall and per-class metrics, for the table."""
    rows = []
    cls = metrics["overall"]["classification"]
    for key in ("n", "accuracy", "precision", "recall", "f1", "roc_auc"):
        if key in cls:
            rows.append((key, cls[key]))
    if metrics.get("n_no_information"):  # core.information: left out of every metric
        rows.append(("no information (left out)", metrics["n_no_information"]))
    scopes = [("all", metrics["overall"])] + list(metrics["per_class"].items())
    for block, prefix in (("regression", ""), ("consistent", "consistent ")):
        for scope, blocks in scopes:
            for key in ("mae", "rmse", "r2", "pearson_r", "slope", "intercept"):
                if block in blocks:
                    rows.append((f"{prefix}{key} ({scope})", blocks[block].get(key, np.nan)))
            interval = blocks.get(block, {}).get("interval")
            if interval:  # the calibrated intervals' empirical coverage, and what they are
                note = interval.get("note") or ("" if interval.get("calibrated", True)
                                                else "uncalibrated")
                value = interval["coverage"]
                rows.append((f"{prefix}interval coverage ({scope})",
                             f"{value:.4g} ({note})" if note else value))
    return [(k, f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)) for k, v in rows]


class EvaluationWidget(QWidget):
    """Metrics and figures of the session model on labelled items."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.table: pd.DataFrame | None = None
        self.metrics: dict | None = None
        self.calibration: dict = {}
        self._failed = False
        #: How the items were cut, for the status line: a native-tile model's tiles.
        self._on = ""
        torch_ahead.start()  # what a run imports (torch, core.metrics' scipy and sklearn)
        place_form(self, "Evaluate")
        layout = scrolling_layout(self)
        form = QFormLayout()
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        self.bin_spin = QDoubleSpinBox(decimals=1, minimum=0.5, maximum=48.0, value=6.0,
                                       suffix=" h")
        form.addRow("items", self.source_combo)
        form.addRow("time bins", self.bin_spin)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Evaluate")
        self.run_button.clicked.connect(self.evaluate)
        self.export_button = QPushButton("Export PNG + JSON…")
        self.export_button.clicked.connect(lambda: self.export())
        self.export_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        self.status = QLabel("")
        fit_messages(self.status)
        layout.addWidget(self.status)
        answered_in_view(self.status, self.run_button, self.export_button)
        self.tabs = QTabWidget()
        self.metrics_table = QTableWidget(0, 2)
        self.metrics_table.setHorizontalHeaderLabels(["metric", "value"])
        self.tabs.addTab(self.metrics_table, "metrics")
        self.figures = {}
        for name in ("ROC", "confusion", "time", "per bin"):
            docked = DockedFigure(self.viewer, figsize=(4.0, 4.0), min_height=280, dock=self)
            self.figures[name] = (docked.figure, docked.canvas)
            self.tabs.addTab(docked, name)
        layout.addWidget(self.tabs)
        #: The last evaluation's per-bin table, and its figures not made yet (made when shown).
        self._per_bin: pd.DataFrame | None = None
        self._unmade: set = set()
        self.tabs.currentChanged.connect(self._draw_shown)

    def items(self) -> list:
        """The chosen items; for a model trained on native tiles, each labelled frame's
        tiles of that size (as it was trained and as it predicts), never the whole frame."""
        if self.source_combo.currentIndex() == 0:
            items = list(self.session.validation_items)
        else:
            from ..core.retrain import labels_of  # torch's side (ui.torch_ahead)

            table = labels_of(self.session.annotations.values())
            items = label_table_items(table) if len(table) else []
        tiles = native_tiles_of(self.session.model.meta.recipe)
        return items if tiles is None else on_tiles(items, TileSpec(tiles))

    def evaluate(self) -> bool:
        """Predict the chosen items in a worker; the figures follow when it is done."""
        if self.worker is not None:
            return False
        model = self.session.model
        if model is None:
            return self._fail("no model: load a checkpoint or train one first")
        try:
            items = self.items()
        except (ValueError, OSError) as exc:
            return self._fail(str(exc))
        if not items:
            return self._fail("no labelled items to evaluate: train first (validation items) "
                              "or label some frames")
        self._failed = False
        tiles = native_tiles_of(model.meta.recipe)
        self._on = f" ({tiles} px tiles of the labelled frames, as the model was trained)" \
            if tiles else ""
        self.status.setText(f"predicting {len(items)} items{self._on}…")
        self.worker = Run(_evaluate, model.model, model.meta, items, self.bin_spin.value(),
                          on_batch=self._on_batch, on_end=self._on_end, parent=self)
        self.run_button.setEnabled(False)
        self.worker.start()
        return True

    def _on_batch(self, batch: Batch) -> None:
        if batch.progress is not None:
            self.status.setText(f"predicted {batch.progress.done}/{batch.progress.total}")
        for evaluation in batch.results:
            self.show(evaluation)
        if batch.failed is not None:
            self._failed = True
            self._fail(f"evaluation failed: {batch.failed.message}", batch.failed.details)

    def _on_end(self, stopped: bool) -> None:
        self.worker = None
        self.run_button.setEnabled(True)

    def show(self, evaluation: Evaluation) -> None:
        """A finished evaluation (computed in the run): its metrics now, each figure when
        its tab is first in view."""
        table = self.table = evaluation.table
        self.metrics, self.calibration = evaluation.metrics, evaluation.calibration
        rows = metric_rows(self.metrics)
        self.metrics_table.setRowCount(len(rows))
        for i, (k, v) in enumerate(rows):
            self.metrics_table.setItem(i, 0, QTableWidgetItem(k))
            self.metrics_table.setItem(i, 1, QTableWidgetItem(v))
        for fig, canvas in self.figures.values():
            with canvas.editing(render=False):  # the last evaluation's figure goes
                fig.clear()
        self._unmade = set(self.figures)
        self._per_bin = evaluation.per_bin
        self._draw_shown()
        auc = self.metrics["overall"]["classification"].get("roc_auc", np.nan)
        mae = self.metrics["overall"]["regression"].get("mae", np.nan)
        self.status.setText(f"{len(table)} items{self._on} · ROC AUC {auc:.3f} · MAE {mae:.2f} h")
        self.export_button.setEnabled(True)

    def _draw_shown(self, *_) -> None:
        """Make the figure on the tab in view, if the last evaluation's is not made yet (its
        artists, on the GUI thread: up to 40 ms each on 2 cores), and render it (off the GUI
        thread, but a few hundred ms of a slow machine's CPU): the hidden ones wait until
        their tab is chosen."""
        name = self.tabs.tabText(self.tabs.currentIndex())
        if name not in self._unmade:  # the metrics, or a figure made already
            return
        self._unmade.discard(name)
        fig, canvas = self.figures[name]
        table = self.table
        y = table["true_class"].to_numpy(dtype=np.float64)
        p = table["p_infected"].to_numpy(dtype=np.float64)
        with canvas.editing():
            fig.clear()
            if name == "ROC":
                roc_figure(y, p, ax=fig.add_subplot())
            elif name == "confusion":
                confusion_figure(y, (p >= 0.5).astype(int), ax=fig.add_subplot())
            elif name == "time":
                time_scatter_figure(table["true_time_h"], table["pred_time_h"], y,
                                    ax=fig.add_subplot())
            else:
                per_bin_figure(self._per_bin, fig=fig)

    def export(self, folder=None):
        """metrics.json, per_bin.csv and the five figures as PNG (written atomically)."""
        if self.table is None:
            return None
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Export the evaluation to")
            if not folder:
                return None
        try:
            paths = save_report(self.table, folder, bin_hours=self.bin_spin.value(),
                                calibration=self.calibration)
        except (OutputNotWritable, OSError) as exc:
            self._fail(f"export failed: {exc}")
            return None
        self.status.setText(f"exported {len(paths)} files to {folder}")
        return paths

    def _fail(self, message: str, details: str = "") -> bool:
        show(self.status, message, details)
        show_error(short(message))
        return False
