"""Dock widget: retrain on the viewer's labels, with live curves, off the GUI thread.

The worker runs :func:`..core.retrain.iter_retrain` (the core's training generator) and
yields its progress events; curves update their line data in place and redraw lazily.
Stop is cooperative: the core checks a flag every batch, and the checkpoint file is only
ever replaced whole, after a validated epoch, so a stop leaves the previous one intact.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..core.annotations import labelled_stores, labels_left_out
from ..core.atomic import OutputNotWritable, check_writable
from ..core.blocks import SPLIT_MODES, BlockSplit
from ..core.choices import ARCHITECTURES, STARTS
from ..core.recipes import BEST_METRICS, RECIPES, Recipe, continuing
from ..core.train_config import TrainConfig
from .devices import device_choices
from .docking import place_form
from .figures import DockedFigure, legend_above
from .messages import answered_in_view, fit_messages, short, show, tell
from .scrolling import scrolling_layout
from .state import SessionModel, session_for
from .teardown import on_dock_closed
from .torch_ahead import when_loaded
from .workers import Batch, Failed, Progress, Result, Run, Stop

#: Curves: history key -> (axes index, label, style).
CURVES = {
    "train_loss": (0, "train total", "C0o-"),
    "val_loss": (0, "val total", "C0o--"),
    "train_cls_loss": (0, "train cls", "C1o-"),
    "val_cls_loss": (0, "val cls", "C1o--"),
    "train_reg_loss": (0, "train reg", "C2o-"),
    "val_reg_loss": (0, "val reg", "C2o--"),
    "val_roc_auc": (1, "val ROC AUC", "C3o-"),
    "val_mae": (2, "val MAE (h)", "C4s-"),
}


def _train(stop: Stop, stores, split, left_out, start, model_config, image_size, current,
           config, path, cache):
    """Run body: read the labels of ``stores`` (snapshots) and plan the split (``split``:
    validation share, split mode, block and guard frames; each labelled stack is opened),
    build the start model (ImageNet may try a download), then train.

    The plan, epochs and the end are results; batches and backbone passes are progress.
    Errors the user can act on get their own message (see :func:`_failure`); a refused
    plan also says which labels were left out (``left_out``).
    """
    from ..core.retrain import (
        iter_retrain,
        labels_of,
        plan_from_labels,
        start_model,
        time_policy_of,
    )
    from ..core.trainer import TrainingError

    try:
        table = labels_of(stores)
        try:
            plan = plan_from_labels(table, *split, config.seed,
                                    native_tiles=config.recipe.native_tiles)
        except (TrainingError, ValueError) as exc:
            yield Failed(f"{exc}{left_out}")
            return
        yield Result(plan)
        model, meta = start_model(start, model_config, image_size, time_policy_of(plan),
                                  current)
        yield Result((model, meta))
        for event in iter_retrain(model, meta, plan, config, path, should_stop=stop,
                                  feature_cache=cache):
            if event.stage in ("epoch", "done", "stopped"):
                yield Result(event)
            if event.stage in ("features", "calibrating"):  # passes before/after the epochs
                yield Progress(event.batch, event.batches, _progress_text(event))
            else:
                yield Progress((event.epoch - 1) * event.batches + event.batch,
                               event.epochs * event.batches, _progress_text(event))
    except Exception as exc:  # noqa: BLE001  shown to the user
        yield _failure(exc)


def _failure(exc: BaseException) -> Failed:
    from ..core.model import PretrainedWeightsUnavailable
    from ..core.trainer import TrainingError

    if isinstance(exc, PretrainedWeightsUnavailable):
        return Failed("ImageNet weights are not available here: pick 'random' under 'start "
                      "from', or copy the weights file (hover for where it goes)", str(exc))
    if isinstance(exc, (TrainingError, ValueError, OSError)):
        return Failed(str(exc))
    failed = Failed.of(exc)
    return Failed(f"training failed: {failed.message}", failed.details)


def _progress_text(event) -> str:
    if event.stage == "features":
        return f"backbone features: {event.batch}/{event.batches} items"
    if event.stage == "calibrating":
        return f"calibrating on the validation wells: {event.batch}/{event.batches} frames"
    if event.stage in ("done", "stopped"):
        return f"{event.stage} after {_format_eta(event.elapsed_s)}"
    return (f"epoch {event.epoch}/{event.epochs}, batch {event.batch}/{event.batches} · "
            f"ETA {_format_eta(event.eta_s)}")


def _fresh_output_path() -> Path:
    """A checkpoint path no run has used: ~/infection-clock-models/model-DATE-TIME.pt."""
    folder = Path.home() / "infection-clock-models"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"model-{stamp}.pt", 1
    while path.exists():
        n += 1
        path = folder / f"model-{stamp}-{n}.pt"
    return path


def _format_eta(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class TrainingWidget(QWidget):
    """Train on all labelled images of this viewer; hand the result to the session."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.trained: SessionModel | None = None
        self._ended = ""  # how the run that made ``trained`` ended, for its status line
        self.history: list[dict] = []
        self.last_event = None
        self.output_path: Path | None = None
        self._failed = False
        self._left_out, self._run_config = "", None  # the run's, for when its plan comes
        #: Backbone features of heads-only runs, kept so the next run on the same
        #: labels and start model skips the backbone (made by the first run: torch's).
        self.feature_cache = None
        self._build()
        when_loaded(self, self._fill_devices)
        self.session.model_changed.connect(self._model_changed)
        on_dock_closed(self, self.cleanup)
        self._model_changed(self.session.model)

    # --- layout ----------------------------------------------------------------------
    def _build(self) -> None:
        place_form(self, "Retrain")
        layout = scrolling_layout(self)
        form = QFormLayout()
        self.start_combo = QComboBox()
        self.start_combo.addItems(STARTS)
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(ARCHITECTURES)
        self.arch_combo.setCurrentText("resnet50")
        self.size_spin = QSpinBox(minimum=32, maximum=2048, singleStep=32, value=224)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["heads", "full"])
        self.epochs_spin = QSpinBox(minimum=1, maximum=1000, value=10)
        self.lr_spin = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, singleStep=1e-4,
                                      value=1e-4)
        self.batch_spin = QSpinBox(minimum=1, maximum=1024, value=32)
        self.cls_spin = QDoubleSpinBox(decimals=2, maximum=100.0, value=1.0)
        self.reg_spin = QDoubleSpinBox(decimals=2, maximum=100.0, value=1.0)
        self.recipe_combo = QComboBox()
        for name, preset in RECIPES.items():
            self.recipe_combo.addItem(name)
            self.recipe_combo.setItemData(self.recipe_combo.count() - 1, preset.summary(),
                                          Qt.ToolTipRole)
        self.recipe_combo.setToolTip("research: the research pipeline's recipe; clock: "
                                     "what held best on wells the model never saw "
                                     "(docs/quality.md)")
        self.recipe_combo.currentTextChanged.connect(self._recipe_chosen)
        self.augment_check = QCheckBox("as the recipe says")
        self.augment_check.setChecked(True)
        self.val_spin = QDoubleSpinBox(decimals=2, maximum=0.9, singleStep=0.05, value=0.2)
        self.split_combo = QComboBox()
        self.split_combo.addItems(SPLIT_MODES)
        self.block_spin = QSpinBox(minimum=1, maximum=10000, value=8)
        # Neighbouring frames look alike: frames this close to a validation block are
        # left out of training, so validation is not scored on near-copies of training.
        self.guard_spin = QSpinBox(minimum=0, maximum=1000, value=1)
        self.best_combo = QComboBox()
        self.best_combo.addItems(list(BEST_METRICS))
        # Few hand-labelled wells make the validation AUC jumpy; the validation loss weighs
        # both heads, so the time head is never left at an early, untrained epoch.
        self.best_combo.setCurrentText("loss")
        self.device_combo = QComboBox()
        self._fill_devices()
        self._default_output = _fresh_output_path()
        self.output_edit = QLineEdit(str(self._default_output))
        self.output_edit.setToolTip("the best epoch is saved here; by default each run gets "
                                    "its own file, so earlier runs are kept")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_output)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_edit)
        out_row.addWidget(browse)
        self.auto_check = QCheckBox("use the new model and refresh predictions when done")
        for label, w in (("start from", self.start_combo), ("backbone", self.arch_combo),
                         ("image size", self.size_spin), ("train", self.mode_combo),
                         ("epochs", self.epochs_spin), ("learning rate", self.lr_spin),
                         ("batch size", self.batch_spin), ("recipe", self.recipe_combo),
                         ("class loss weight", self.cls_spin),
                         ("time loss weight", self.reg_spin), ("augmentation", self.augment_check),
                         ("validation share", self.val_spin), ("split", self.split_combo),
                         ("frames per block", self.block_spin),
                         ("guard band (frames)", self.guard_spin),
                         ("best epoch by val.", self.best_combo), ("device", self.device_combo),
                         ("save best to", out_row)):
            form.addRow(label, w)
        layout.addLayout(form)
        layout.addWidget(self.auto_check)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        self.use_button = QPushButton("Use new model")
        self.use_button.clicked.connect(self.use_trained)
        self.use_button.setEnabled(False)
        for b in (self.start_button, self.stop_button, self.use_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        layout.addWidget(self.progress)
        self.eta_label = QLabel("")
        self.device_label = QLabel("")
        self.status = QLabel("")
        fit_messages(self.status)
        for w in (self.eta_label, self.device_label, self.status):
            layout.addWidget(w)
        answered_in_view(self.status, self.start_button, self.stop_button, self.use_button)

        self.curves = DockedFigure(self.viewer, figsize=(4.5, 5.0), min_height=300, dock=self)
        self.figure, self.canvas = self.curves.figure, self.curves.canvas
        axes = self.figure.subplots(3, 1, sharex=True)
        self.axes = axes
        axes[0].set_ylabel("loss")
        axes[1].set_ylabel("val ROC AUC")
        axes[2].set_ylabel("val MAE (h)")
        axes[2].set_xlabel("epoch")
        self.lines = {key: axes[i].plot([], [], style, label=label, markersize=4)[0]
                      for key, (i, label, style) in CURVES.items()}
        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        legend_above(axes[0], ncol=3)
        layout.addWidget(self.curves)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the best checkpoint", self.output_edit.text(),
                                              "Checkpoint (*.pt)")
        if path:
            self.output_edit.setText(path)

    def _model_changed(self, model) -> None:
        if model is not None and self.worker is None:
            self.start_combo.setCurrentText("session model")
            self.arch_combo.setCurrentText(model.meta.model.arch)
            self.size_spin.setValue(model.meta.preprocessing.image_size)

    def _fill_devices(self) -> None:
        """The picker offers this machine's devices (before torch is loaded, what every
        machine has), keeping the choice."""
        chosen = self.device_combo.currentData()
        self.device_combo.clear()
        for label, value in device_choices():
            self.device_combo.addItem(label, value)
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(chosen)))

    # --- run -------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs_spin.value(), batch_size=self.batch_spin.value(),
                           lr=self.lr_spin.value(), cls_weight=self.cls_spin.value(),
                           reg_weight=self.reg_spin.value(), mode=self.mode_combo.currentText(),
                           augment=self.augment_check.isChecked(),
                           best_metric=self.best_combo.currentText(),
                           device=self.device_combo.currentData(), recipe=self._recipe())

    def _recipe(self) -> Recipe:
        """The chosen preset; where it sets the learning rate or best-epoch metric, the
        values in the form (which the preset filled in, and the user may have changed).
        Training on from a session model trained on native tiles keeps its tiles."""
        preset = RECIPES[self.recipe_combo.currentText()]
        form = {"lr": self.lr_spin.value(), "best_metric": self.best_combo.currentText()}
        chosen = replace(preset, **{k: v for k, v in form.items()
                                    if getattr(preset, k) is not None})
        current = self.session.model
        if self.start_combo.currentText() == "session model" and current is not None:
            return continuing(chosen, current.meta.recipe)
        return chosen

    def _recipe_chosen(self, name: str) -> None:
        """The preset's learning rate and best-epoch metric, or SPEC 6's where it sets none
        (so research chosen after clock does not keep clock's)."""
        preset, spec = RECIPES[name], TrainConfig()
        self.lr_spin.setValue(spec.lr if preset.lr is None else preset.lr)
        self.best_combo.setCurrentText(preset.best_metric or spec.best_metric)

    def start(self) -> bool:
        """Check everything cheap on the GUI thread, then train in a worker."""
        if self.worker is not None:
            return False
        if Path(self.output_edit.text().strip()) == self._default_output:
            # a run with the default name gets a name of its own: earlier runs are kept
            self._default_output = _fresh_output_path()
            self.output_edit.setText(str(self._default_output))
        path = Path(self.output_edit.text().strip()).expanduser()
        if not self.output_edit.text().strip():
            return self._fail("choose a file to save the best checkpoint to")
        try:
            check_writable(path)
        except OutputNotWritable as exc:
            return self._fail(str(exc))
        stores = [store.snapshot() for store in self.session.annotations.values()]
        left_out = labels_left_out(stores)
        left_out = f" ({left_out})" if left_out else ""
        if not labelled_stores(stores):
            return self._fail(f"no labels yet: label frames or crops of both classes first "
                              f"(annotation dock){left_out}")
        from ..core.device import select_device  # torch's side (ui.torch_ahead)
        from ..core.feature_cache import FeatureCache
        from ..core.model import ModelConfig
        from ..core.trainer import TrainingError

        try:
            config = self.train_config()
            device = select_device(config.device)
        except (TrainingError, ValueError, RuntimeError) as exc:
            return self._fail(str(exc))
        start = self.start_combo.currentText()
        current = self.session.model
        if start == "session model" and current is None:
            return self._fail("there is no loaded model to start from; load a checkpoint, or "
                              "start from ImageNet or random")
        self.history, self.last_event, self._failed = [], None, False
        with self.canvas.editing():  # rendered off the GUI thread after
            for line in self.lines.values():
                line.set_data([], [])
        self.device_label.setText(f"device: {device}")
        self.status.setText(f"reading the labels and planning the split…{left_out}")
        self._left_out, self._run_config = left_out, config
        self.progress.setRange(0, 0)  # busy until the plan says how many batches
        self.use_button.setEnabled(False)
        self.output_path = path
        if self.feature_cache is None:
            self.feature_cache = FeatureCache()
        split = (self.val_spin.value(), self.split_combo.currentText(), self.block_spin.value(),
                 self.guard_spin.value())
        self.worker = Run(_train, stores, split, left_out, start,
                          ModelConfig(arch=self.arch_combo.currentText()), self.size_spin.value(),
                          (current.model, current.meta) if current else None, config, path,
                          self.feature_cache, on_batch=self._on_batch, on_end=self._on_end,
                          parent=self)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.worker.start()
        return True

    def stop(self) -> None:
        """Ask the run to stop at the next batch."""
        if self.worker is None or self.worker.stopping:
            return
        self.worker.stop()
        self.status.setText("stopping at the next batch…")

    def _on_batch(self, batch: Batch) -> None:
        """What the run did since the last tick: curves redrawn once, progress once."""
        epochs = False
        for result in batch.results:
            if isinstance(result, BlockSplit):
                self._planned(result)
                continue
            if isinstance(result, tuple):
                self._model = result[0]  # the meta that goes with it comes with the end
                continue
            self.last_event = result
            if result.stage == "epoch":
                self.history.append(result.record)
                epochs = True
        if batch.progress is not None:
            self.progress.setRange(0, batch.progress.total)
            self.progress.setValue(batch.progress.done)
            self.eta_label.setText(batch.progress.text)
        if epochs:
            self._update_curves()
        if batch.failed is not None:
            self._failed = True
            self._fail(batch.failed.message, batch.failed.details)

    def _planned(self, plan: BlockSplit) -> None:
        """The run has planned its split: say it, and size the progress bar."""
        config = self._run_config
        self.session.validation_items = list(plan.val)
        tiles = config.recipe.native_tiles
        on = f" on {tiles} px tiles, as the session model was trained" if tiles else ""
        self.status.setText(f"training{on}: {plan.summary()}{self._left_out}")
        self.progress.setRange(0, config.epochs * max(1, -(-len(plan.train) // config.batch_size)))
        self.progress.setValue(0)

    def _update_curves(self) -> None:
        epochs = [r["epoch"] for r in self.history]
        with self.canvas.editing():  # rendered off the GUI thread after
            for key, line in self.lines.items():
                line.set_data(epochs, [r.get(key, np.nan) for r in self.history])
            for ax in self.axes:
                ax.relim()
                ax.autoscale_view()
            self.axes[-1].set_xlim(0.5, max(epochs) + 0.5)  # one epoch still shows its points

    def _on_end(self, stopped: bool) -> None:
        """The run is over and everything it yielded is shown: say how it ended."""
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.progress.maximum() == 0:  # ended before its plan: no longer busy
            self.progress.setRange(0, 1)
        event = self.last_event
        if self._failed or event is None or event.stage not in ("done", "stopped"):
            return
        if event.best_epoch is None:
            self.status.setText(f"{event.stage} before the first epoch ended: no new checkpoint; "
                                f"'{self.output_path}' is unchanged")
            return
        self.trained = SessionModel(self._model.eval(), event.meta, Path(event.checkpoint),
                                    origin="trained in this session")
        word = "stopped" if event.stage == "stopped" else "done"
        self._ended = f"{word}: best epoch {event.best_epoch} saved to {event.checkpoint}"
        self.status.setText(self._ended)
        self.use_button.setEnabled(True)
        if self.auto_check.isChecked():
            self.use_trained()

    def use_trained(self) -> None:
        """Make the trained model the session's and ask for fresh predictions."""
        if self.trained is None:
            return
        self.session.set_model(self.trained)
        refreshed = self.session.request_prediction()
        notice = "new model in use" + ("; predicting again" if refreshed else
                                       " (open 'Predict infection' to see its overlays)")
        tell(self.status, f"{self._ended}; {notice}", notice)

    def _fail(self, message: str, details: str = "") -> bool:
        show(self.status, message, details)
        show_error(short(message))
        return False

    def cleanup(self) -> None:
        """Stop a running training and leave the session (the dock was closed)."""
        if self.worker is not None:
            self.worker.stop()
        self.session.model_changed.disconnect(self._model_changed)
