"""Dock widget: label frames and crops of a time-lapse, saved as you go.

Labels go to the image the user looks at (the session's :attr:`.state.Session.image`:
the active image, or the only visible one); with none, the dock refuses and says why,
and the target's name is always shown. Per image: the stack's condition (infected with an
onset, or mock) and frame interval, per-frame labels (buttons, or Shift+I / Shift+U /
Shift+C on the viewer; labelled frames are outlined on the canvas) and per-crop labels
(rectangles in a Shapes layer with a ``label`` feature; the same keys label the selected
rectangles). A condition change that would change what labels mean asks first; Undo
(Ctrl+Z in the dock) takes changes back. Every change is saved atomically to the image's
sidecar file (:mod:`..core.annotations`), and "saved" is said only once the file reads back.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
from napari.layers import Image, Shapes
from napari.layers.utils.color_encoding import NominalColorEncoding
from napari.utils.key_bindings import coerce_keybinding
from napari.utils.notifications import show_error, show_warning
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.annotations import (
    CONDITIONS,
    AnnotationError,
    AnnotationStore,
    labelled_stores,
    labels_left_out,
    open_annotations,
    sidecar_path,
)
from ..core.atomic import OutputNotWritable
from ..core.labels import LABEL_VALUES, LabelTableError, read_label_table, write_label_table
from ..core.stack import open_stack, write_stack
from ..core.targets import DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H
from .docking import place_form
from .layer_roles import (
    CHANNEL,
    FRAME_INTERVAL_H,
    INFECTED,
    ONSET_H,
    OUTPUT_KIND,
    SOURCE_PATH,
    annotation_key,
    drawn_over,
    is_output_of,
    layer_stack_path,
    memory_key,
    output_layer,
    output_metadata,
    time_setting,
)
from .messages import answered_in_view, in_view
from .scrolling import scrolling_layout
from .state import session_for
from .teardown import on_dock_closed

KEYS = {"Shift-I": "infected", "Shift-U": "uninfected", "Shift-C": None}
COLOURS = {"infected": "red", "uninfected": "dodgerblue"}
#: Kind (and name suffix) of an image's layer of crops, and of the one that outlines its
#: labelled frames on the canvas.
CROPS = "crops"
MARKS_SUFFIX = "labelled frames"
#: Where the outlines' words sit: this share of the frame's height below its top edge.
MARKS_TEXT_BELOW = 0.07
#: The layer-list events that can change what lies over the image labelled.
LAYER_LIST_CHANGES = frozenset({"visible", "opacity", "blending", "moved", "inserted", "removed"})


def _box_of(vertices: np.ndarray, frame_shape) -> tuple[int, tuple[int, int, int, int]]:
    """Frame and pixel box (y0, x0, y1, x1) of a rectangle's (t, y, x) vertices."""
    frame = int(round(float(vertices[0, 0])))
    h, w = frame_shape
    y0, x0 = np.floor(vertices[:, -2:].min(0)).astype(int)
    y1, x1 = np.ceil(vertices[:, -2:].max(0)).astype(int)
    return frame, (max(int(y0), 0), max(int(x0), 0), min(int(y1), h), min(int(x1), w))


def _rectangle(frame: int, box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.array([[frame, y0, x0], [frame, y0, x1], [frame, y1, x1], [frame, y1, x0]], float)


def _label_features(labels) -> pd.DataFrame:
    """The Shapes layer's ``label`` feature: categorical, so an empty layer has its type."""
    return pd.DataFrame({"label": pd.Categorical(labels, categories=LABEL_VALUES)})


def _marks_features(labels, image: str) -> pd.DataFrame:
    """The labelled-frame outlines' features: each one's label and its image's name."""
    features = _label_features(labels)
    features["image"] = pd.Series([image] * len(labels), dtype=object)
    return features


def frame_ranges(frames) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    frames, runs = sorted(frames), []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


class AnnotationWidget(QWidget):
    """Labels of the chosen image layer; one store per image, shared through the session."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.layer: Image | None = None
        self.store: AnnotationStore | None = None
        self.sidecar: Path | None = None
        self.crops_layer: Shapes | None = None
        self._syncing = False
        self._closed = False
        #: Per stack path: the sidecar its session store was read from (or merged with).
        self._read_from: dict[str, Path] = {}
        on_dock_closed(self, self.cleanup)
        self._build()
        self.session.image_changed.connect(self._serve)
        self.session.image_renamed.connect(self._renamed)
        self.viewer.layers.events.connect(self._layer_list_changed)
        self.viewer.dims.events.current_step.connect(self._show_frame)
        self._handlers = {key: self._key_handler(label) for key, label in KEYS.items()}
        for key, handler in self._handlers.items():
            self.viewer.bind_key(key, handler, overwrite=True)
        self._serve(self.session.image)

    # --- layout ----------------------------------------------------------------------
    def _build(self) -> None:
        place_form(self, "Annotate")
        layout = scrolling_layout(self)  # fits beside the other docks
        form = QFormLayout()
        # what the labels go to: the image in view (select another in the layer list)
        self.target_label = QLabel()
        self.target_label.setWordWrap(True)
        form.addRow("labelling", self.target_label)
        self.project_edit = QLineEdit()
        self.project_edit.setPlaceholderText("next to each image (default)")
        self.project_edit.editingFinished.connect(self._project_changed)
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_project)
        row = QHBoxLayout()
        row.addWidget(self.project_edit)
        row.addWidget(browse)
        form.addRow("project folder", row)
        layout.addLayout(form)

        stack_box = QGroupBox("stack condition")
        sform = QFormLayout(stack_box)
        self.condition_combo = QComboBox()
        self.condition_combo.addItems(CONDITIONS)
        self.onset_spin = QDoubleSpinBox(decimals=2, maximum=10000.0, singleStep=0.5, suffix=" h")
        self.onset_spin.setValue(DEFAULT_ONSET_H)
        self.interval_spin = QDoubleSpinBox(decimals=3, minimum=0.001, maximum=1000.0,
                                            singleStep=0.25, suffix=" h")
        self.interval_spin.setValue(DEFAULT_FRAME_INTERVAL_H)
        self.condition_combo.currentTextChanged.connect(self._condition_changed)
        self.onset_spin.editingFinished.connect(self._condition_changed)
        self.interval_spin.editingFinished.connect(self._condition_changed)
        sform.addRow("condition", self.condition_combo)
        sform.addRow("infection onset", self.onset_spin)
        sform.addRow("frame interval", self.interval_spin)
        self.time_source = QLabel()
        self.time_source.setWordWrap(True)
        sform.addRow(self.time_source)
        layout.addWidget(stack_box)

        frame_box = QGroupBox("frame labels (Shift+I / Shift+U / Shift+C)")
        fl = QVBoxLayout(frame_box)
        self.frame_info = QLabel("no image")
        self.frame_info.setWordWrap(True)
        fl.addWidget(self.frame_info)
        rng = QHBoxLayout()
        self.range_check = QCheckBox("frames")
        self.range_from = QSpinBox()
        self.range_to = QSpinBox()
        rng.addWidget(self.range_check)
        rng.addWidget(self.range_from)
        rng.addWidget(QLabel("to"))
        rng.addWidget(self.range_to)
        fl.addLayout(rng)
        buttons = QHBoxLayout()
        self.buttons = {}
        for text, label in (("Infected", "infected"), ("Uninfected", "uninfected"),
                            ("Clear", None)):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, lab=label: self.label_current(lab))
            buttons.addWidget(b)
            self.buttons[label] = b
        fl.addLayout(buttons)
        self.labelled_info = QLabel()
        self.labelled_info.setWordWrap(True)
        fl.addWidget(self.labelled_info)
        layout.addWidget(frame_box)

        crop_box = QGroupBox("crop labels (rectangles)")
        cl = QHBoxLayout(crop_box)
        self.crop_label_combo = QComboBox()
        self.crop_label_combo.addItems(["infected", "uninfected"])
        self.crop_label_combo.currentTextChanged.connect(self._crop_default_changed)
        self.crops_button = QPushButton("Draw crops")
        self.crops_button.clicked.connect(self.show_crops_layer)
        self.apply_crops_button = QPushButton("Set selected")
        self.apply_crops_button.clicked.connect(
            lambda: self.label_selected_crops(self.crop_label_combo.currentText()))
        cl.addWidget(QLabel("label:"))
        cl.addWidget(self.crop_label_combo)
        cl.addWidget(self.apply_crops_button)
        cl.addWidget(self.crops_button)
        layout.addWidget(crop_box)

        self.counts_label = QLabel()
        layout.addWidget(self.counts_label)
        layout.addWidget(QLabel("consistency:"))
        self.issues_list = QListWidget()
        self.issues_list.setMaximumHeight(90)
        layout.addWidget(self.issues_list)
        io = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Take back the last label or condition change (Ctrl+Z)")
        self.undo_button.clicked.connect(self.undo)
        io.addWidget(self.undo_button)
        self.import_button = QPushButton("Import CSV…")
        self.import_button.clicked.connect(lambda: self.import_csv())
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(lambda: self.export_csv())
        io.addWidget(self.import_button)
        io.addWidget(self.export_button)
        layout.addLayout(io)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch()
        # after a click, the answer ("saved ...", counts, contradictions) is in view
        answered_in_view(self.status, *self.buttons.values(), self.apply_crops_button,
                         self.undo_button, self.import_button, self.export_button)

    # --- the image served ------------------------------------------------------------
    @property
    def project_dir(self) -> Path | None:
        text = self.project_edit.text().strip()
        return Path(text) if text else None

    def set_project_dir(self, folder) -> None:
        self.project_edit.setText(str(folder) if folder else "")
        self._project_changed()

    def _browse_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder for annotations")
        if folder:
            self.set_project_dir(folder)

    def _project_changed(self) -> None:
        """Labels move with the project folder: those of every open image are saved there
        now (images with no file are saved too; the one in view last, so that the status
        line speaks of it). Labels already in that folder are read and merged first."""
        for layer in self._labelled_images():
            try:
                store, sidecar = self._store_of(layer)
            except (AnnotationError, OSError) as exc:
                self._error(f"labels of '{layer.name}' NOT saved (kept in memory): {exc}")
                continue
            self._save_labels(layer, store, sidecar)
        if self.layer is not None:
            self._serve(self.layer, force=True)
            if self.store is not None and not self.store.empty:
                self._save()

    def _labelled_images(self) -> list:
        """Open images other than the one in view that have labels in this session."""
        labelled = {key for key, store in self.session.annotations.items() if not store.empty}
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer is not self.layer
                and annotation_key(layer) in labelled]

    def _serve(self, layer, force: bool = False) -> None:
        """Make ``layer`` (the image in view, or None) the one the labels go to."""
        if layer is self.layer and not force:
            return
        self.layer, self.store, self.sidecar = layer, None, None
        if layer is not None:
            try:
                self._open_store(layer)
            except (AnnotationError, OSError) as exc:
                self._error(str(exc))
        self._show_target()
        self._load_crops_layer()
        self._sync_controls()
        self._changed(save=False)
        self._mark_text_on_target()
        if self.store is not None:  # read back (a sidecar): its frame interval and onset
            self.session.labels_changed.emit(self.store.stack)

    def _renamed(self, image) -> None:
        if self.layer is not None and image == self.layer:  # a proxy of it compares equal
            self._show_target()
            self._show_marks()  # its words name it

    def _layer_list_changed(self, event) -> None:
        """The layers over the target may have changed (an eye clicked, a layer dragged,
        its opacity or blending set): the warning follows. Every layer's events come here
        (napari's layer list passes them on); the others are let go at once."""
        if event.type in LAYER_LIST_CHANGES and self.layer is not None:
            self._show_target()

    def _show_target(self) -> None:
        if self.layer is None:
            reason = self.session.image_reason or "no time-lapse image"
            self.target_label.setText(f"<i>nothing: {reason}</i>")
            self.time_source.setText("")
            return
        text = f"<b>{self.layer.name}</b>"
        over = drawn_over(self.viewer, self.layer)
        if over:  # the user sees another image's frames where this one is labelled
            names = ", ".join(f"'{layer.name}'" for layer in over)
            text += f"<br>⚠ under {names} on the canvas: hide it to see what you label"
        self.target_label.setText(text)

    def _open_store(self, layer) -> None:
        self.store, self.sidecar = self._store_of(layer)
        self.status.setText(self._where_saved())

    def _store_of(self, layer) -> tuple[AnnotationStore, Path | None]:
        """The labels of ``layer`` and the sidecar they are saved to (None while the image
        has no file), registered in the session. A sidecar that exists is always read,
        never written over unread: labels made in this session are merged into it (where
        both label a frame, the session's label wins)."""
        n_frames = int(layer.data.shape[0])
        frame_shape = tuple(int(v) for v in layer.data.shape[1:3])
        meta = layer.metadata
        if layer_stack_path(layer) is None and self.project_dir is not None:
            copy = self._find_image_copy(layer)  # saved to this project earlier
            if copy is not None:
                meta[SOURCE_PATH] = str(copy)
        path = layer_stack_path(layer)
        memory = self.session.annotations.get(memory_key(layer))
        sidecar = None
        if path is None:
            # An image with no file (sample data): labels live in memory until a project
            # folder is chosen; the first save then writes the image there too.
            store = memory or AnnotationStore(
                stack=memory_key(layer), n_frames=n_frames, frame_shape=frame_shape)
        else:
            store = self.session.annotations.get(path)
            sidecar = sidecar_path(path, self.project_dir)
            if store is None or (self._read_from.get(path) != sidecar and sidecar.is_file()):
                saved, sidecar = open_annotations(
                    path, n_frames, frame_shape, self.project_dir, meta.get(FRAME_INTERVAL_H))
                if store is not None and not store.empty:  # labelled here before: kept too
                    if saved.condition == "unknown":
                        saved.set_condition(store.condition, store.onset_h,
                                            store.frame_interval_h)
                    saved.merge_label_table(store.to_label_table())
                    saved.forget_history()
                store = saved
            self._read_from[path] = sidecar
            if memory is not None:  # labelled before it had a file: nothing is dropped
                self.session.annotations.pop(memory.stack)
                memory.stack = path
                if store.empty:
                    store = memory
                elif not memory.empty:
                    store.merge_label_table(memory.to_label_table())
        if store.empty and store.condition == "unknown" and INFECTED in meta:
            try:
                store.set_condition("infected" if meta[INFECTED] else "mock",
                                    meta.get(ONSET_H), meta.get(FRAME_INTERVAL_H))
                store.forget_history()  # what the file says, not a change to undo
            except AnnotationError:
                pass
        if meta.get(CHANNEL) is not None and (store.empty or store.channel is None):
            store.channel = int(meta[CHANNEL])  # labels train on the channel shown
        self.session.annotations[store.stack] = store
        return store, sidecar

    def _where_saved(self) -> str:
        store = self.store
        if self.sidecar is None:
            if self.project_dir is None:
                return ("This image has no file: choose a project folder to save its labels "
                        "(the image is saved there too).")
            return (f"No labels saved yet; the first one saves this image and its labels "
                    f"to {self.project_dir}.")
        if store.empty:
            return f"No labels yet; they will be saved to {self.sidecar}."
        return f"{_how_many(store)} in {self.sidecar}"

    def _find_image_copy(self, layer) -> Path | None:
        """This image's copy in the project folder, if one was saved there: the file of
        its name (or ``name_2.tif``...) that holds the same pixels."""
        data = np.asarray(layer.data)
        for path in self._copy_names(layer):
            if not path.exists():
                return None
            if _same_pixels(path, data):
                return path
        return None

    def _copy_names(self, layer):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer.name).strip("_") or "image"
        yield (self.project_dir / f"{safe}.tif").resolve()
        n = 2
        while True:
            yield (self.project_dir / f"{safe}_{n}.tif").resolve()
            n += 1

    def _save_image_copy(self, layer) -> str:
        """Write an in-memory image to the project folder as a TIFF the trainer can read.

        A file of that name is reused only when it holds the same pixels (this image,
        saved earlier); otherwise the name gets a counter (``name_2.tif``...), so another
        image of the same name is never taken for this one nor overwritten.
        """
        data = np.asarray(layer.data)
        for path in self._copy_names(layer):
            if not path.exists():
                interval = float(layer.metadata.get(FRAME_INTERVAL_H, DEFAULT_FRAME_INTERVAL_H))
                write_stack(path, data, "TYXS" if layer.rgb else "TYX", interval)
                break
            if _same_pixels(path, data):
                break
        layer.metadata[SOURCE_PATH] = str(path)
        return str(path)

    # --- controls <-> store ----------------------------------------------------------
    def _sync_controls(self) -> None:
        store = self.store
        enabled = store is not None
        for w in (*self.buttons.values(), self.condition_combo, self.onset_spin,
                  self.interval_spin, self.crops_button, self.apply_crops_button,
                  self.export_button, self.import_button, self.undo_button):
            w.setEnabled(enabled)
        if not enabled:
            self.time_source.setText("")
            return
        for w in (self.condition_combo, self.onset_spin, self.interval_spin):
            w.blockSignals(True)
        self.condition_combo.setCurrentText(store.condition)
        self.onset_spin.setValue(store.onset_h)
        self.interval_spin.setValue(store.frame_interval_h)
        for w in (self.condition_combo, self.onset_spin, self.interval_spin):
            w.blockSignals(False)
        for spin in (self.range_from, self.range_to):
            spin.setMaximum(store.n_frames - 1)
        self._show_time_source()

    def _show_time_source(self) -> None:
        """Where the stack's interval and onset came from; "set here" once the user set them."""
        time = time_setting(self.layer)
        store = self.store
        if (store.frame_interval_h, store.onset_h) == (time.frame_interval_h, time.onset_h):
            self.time_source.setText(time.describe())
        else:
            self.time_source.setText(f"{store.frame_interval_h:g} h/frame, onset "
                                     f"{store.onset_h:g} h: set here")

    def _condition_changed(self, *_) -> None:
        """Set the stack's condition; when labels would change meaning, ask first."""
        store = self.store
        if store is None:
            return
        wanted = (self.condition_combo.currentText(), self.onset_spin.value(),
                  self.interval_spin.value())
        if wanted == (store.condition, store.onset_h, store.frame_interval_h):
            return
        try:
            changed = store.relabelled_by(*wanted)
            if changed and not self._confirm(
                f"Change '{self.layer.name}' to {wanted[0]}, onset {wanted[1]:g} h, "
                f"{wanted[2]:g} h per frame? {changed} of its labels would change meaning "
                "(their time target, or whether they contradict the condition). "
                "Undo takes it back."
            ):
                self._sync_controls()  # back to what the store holds
                return
            store.set_condition(*wanted)
        except AnnotationError as exc:
            self._error(str(exc))
            self._sync_controls()
            return
        self._show_time_source()
        self._changed()

    def _confirm(self, question: str) -> bool:
        """Ask in a dialog (No is the default); True on Yes."""
        box = QMessageBox(QMessageBox.Icon.Question, "Change the stack's condition?", question,
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        return box.exec() == QMessageBox.StandardButton.Yes

    def keyPressEvent(self, event) -> None:
        """Ctrl+Z (the platform's undo) anywhere in the dock undoes a label change; text
        fields keep their own undo."""
        if event.matches(QKeySequence.StandardKey.Undo):
            self.undo()
            in_view(self.status)
            event.accept()
            return
        super().keyPressEvent(event)

    def undo(self) -> bool:
        """Take back the last change of this image's labels or condition."""
        if self.store is None or not self.store.undo():
            self.status.setText("nothing to undo")
            return False
        if self.crops_layer is not None:
            self._write_crops_layer()
        else:
            self._load_crops_layer()
        self._sync_controls()
        self._changed()
        return True

    def current_frame(self) -> int:
        return int(self.viewer.dims.current_step[0])

    def label_current(self, label: str | None) -> None:
        """Label (or clear) the current frame, or the frame range when it is ticked."""
        if self.store is None:
            self._error(f"not labelled: {self.session.image_reason or 'no image'}")
            return
        if self.range_check.isChecked():
            lo, hi = sorted((self.range_from.value(), self.range_to.value()))
            frames = range(lo, hi + 1)
        else:
            frames = [self.current_frame()]
        self.store.label_frames(list(frames), label)
        self._changed()

    def _key_handler(self, label):
        """A viewer key binding that holds the widget weakly (the keymap must not keep it)."""
        ref = weakref.ref(self)

        def handler(viewer):
            self = ref()
            if self is None or self._closed:
                return
            self._serve(self.session.image)  # the image in view at the moment of the key
            active = viewer.layers.selection.active
            # by what it is: through the Plugins menu the dock holds a proxy of the viewer,
            # and its crops layer is a proxy object, never the layer napari hands the key
            if (self.crops_layer is not None and active is not None and self.layer is not None
                    and is_output_of(active, self.layer, CROPS) and active.selected_data):
                self.label_selected_crops(label)
            else:
                self.label_current(label)

        handler.__doc__ = f"Infection clock: label {label or 'clear'}"
        return handler

    # --- crops -----------------------------------------------------------------------
    def show_crops_layer(self) -> Shapes | None:
        """The crops Shapes layer of this image, in rectangle mode."""
        if self.layer is None:
            return None
        if self.crops_layer is None or self.crops_layer not in self.viewer.layers:
            self._load_crops_layer(create=True)
        self.viewer.layers.selection.active = self.crops_layer
        self.crops_layer.mode = "add_rectangle"
        return self.crops_layer

    def _load_crops_layer(self, create: bool = False) -> None:
        self._disconnect_crops()
        self.crops_layer = None
        if self.layer is None or self.store is None:
            return
        layer = output_layer(self.viewer, self.layer, CROPS)
        if layer is None:
            if not (self.store.crops or create):
                return
            layer = self.viewer.add_shapes(
                ndim=3, name=f"{self.layer.name} {CROPS}", edge_width=2,
                face_color="transparent", features=_label_features([]),
                scale=self.layer.scale, translate=self.layer.translate,
                metadata=output_metadata(self.layer, CROPS))
            self.viewer.layers.selection.active = self.layer
        self.crops_layer = layer
        self._write_crops_layer()
        layer.events.data.connect(self._crops_edited)
        self._crop_default_changed(self.crop_label_combo.currentText())

    def _disconnect_crops(self) -> None:
        if self.crops_layer is not None:
            self.crops_layer.events.data.disconnect(self._crops_edited)

    def _write_crops_layer(self) -> None:
        """Store -> layer (on load and import)."""
        items = sorted(self.store.crops.items())
        self._syncing = True
        try:
            self.crops_layer.data = [_rectangle(f, b) for (f, b), _ in items]
            if items:
                self.crops_layer.shape_type = "rectangle"
            self.crops_layer.features = _label_features([lab for _, lab in items])
            self._colour_crops()
        finally:
            self._syncing = False

    def _colour_crops(self) -> None:
        labels = list(self.crops_layer.features.get("label", []))
        if labels:
            self.crops_layer.edge_color = [COLOURS.get(lab, "white") for lab in labels]

    def _crop_default_changed(self, label: str) -> None:
        if self.crops_layer is not None:
            self.crops_layer.feature_defaults = {"label": label}
            self.crops_layer.current_edge_color = COLOURS[label]

    def _crops_edited(self, event=None) -> None:
        if self._syncing or getattr(event, "action", "added") not in ("added", "removed", "changed"):
            return
        self._read_crops_layer()

    def _read_crops_layer(self) -> None:
        """Layer -> store: every rectangle with its label feature."""
        layer, shape = self.crops_layer, self.store.frame_shape or self.layer.data.shape[1:3]
        labels = list(layer.features["label"]) if "label" in layer.features else []
        crops = {}
        for vertices, label in zip(layer.data, labels):
            label = label if label in COLOURS else self.crop_label_combo.currentText()
            frame, box = _box_of(np.asarray(vertices), shape)
            if box[2] > box[0] and box[3] > box[1] and 0 <= frame < self.store.n_frames:
                crops[(frame, box)] = label
        try:
            self.store.set_all_crops(crops)
        except AnnotationError as exc:
            self._error(str(exc))
            return
        self._colour_crops()
        self._changed()

    def label_selected_crops(self, label: str | None) -> None:
        """Set the label of the selected rectangles (None deletes them)."""
        layer = self.crops_layer
        if layer is None or not layer.selected_data:
            self._error("select rectangles in the crops layer first")
            return
        chosen = sorted(layer.selected_data)
        if label is None:
            layer.remove_selected()
            return
        features = layer.features.copy()
        features.loc[chosen, "label"] = label
        layer.features = features
        self._read_crops_layer()

    # --- after every change ----------------------------------------------------------
    def _changed(self, save: bool = True) -> None:
        self._show_frame()
        self._show_target()  # what lies over it may have changed since it became the target
        store = self.store
        self.issues_list.clear()
        self._show_marks()
        if store is None:
            self.counts_label.setText("")
            self.labelled_info.setText("")
            return
        self.undo_button.setEnabled(store.can_undo)
        labelled = {lab: [f for f, v in store.frames.items() if v == lab] for lab in COLOURS}
        self.labelled_info.setText(" · ".join(
            f"<span style='color:{COLOURS[lab]}'>{lab}</span>: {frame_ranges(frames)}"
            for lab, frames in labelled.items() if frames) or "no frame labelled yet")
        c = store.counts()
        self.counts_label.setText(
            f"frames: {c['frames']['infected']} infected, {c['frames']['uninfected']} uninfected"
            f" · crops: {c['crops']['infected']} infected, {c['crops']['uninfected']} uninfected")
        issues = store.issues()
        self.issues_list.addItems([str(i) for i in issues] or ["no contradictions"])
        if save:
            self._save()
            self.session.labels_changed.emit(store.stack)

    def _save(self) -> None:
        self.sidecar = self._save_labels(self.layer, self.store, self.sidecar)

    def _save_labels(self, layer, store: AnnotationStore, sidecar: Path | None) -> Path | None:
        """Write the labels; say "saved" only once the file is on disk and reads back.
        Returns the sidecar (None while the image has no file)."""
        if sidecar is None:
            if self.project_dir is None:
                self.status.setText("Not saved: this image has no file; choose a project folder "
                                    "(labels are kept in memory until then).")
                return None
            try:
                path = self._save_image_copy(layer)
            except OSError as exc:  # OutputNotWritable is an OSError
                self._error(f"labels NOT saved (kept in memory): cannot write the image to "
                            f"{self.project_dir}: {exc}")
                return None
            self.session.annotations.pop(store.stack, None)
            store.stack = path
            self.session.annotations[path] = store
            sidecar = sidecar_path(path, self.project_dir)
            self._read_from[path] = sidecar
        if store.empty and not sidecar.exists():
            self.status.setText(f"No labels yet; they will be saved to {sidecar}.")
            return sidecar  # nothing to save before a label exists
        try:
            store.save(sidecar)
            back = AnnotationStore.from_json(sidecar.read_text(encoding="utf-8"),
                                             stack=store.stack)
        except (OSError, ValueError, KeyError) as exc:  # AnnotationError is a ValueError
            self._error(f"labels NOT saved (kept in memory): {exc}")
            return sidecar
        if back.to_json() != store.to_json():
            self._error(f"labels NOT saved (kept in memory): {sidecar} reads back "
                        "different labels")
            return sidecar
        self.status.setText(f"saved: {_how_many(store)} in {sidecar}")
        return sidecar

    def _show_marks(self) -> None:
        """Outline each labelled frame on the canvas, in its label's colour, with the image's
        name and the label written inside the frame near its top (at the corner, outside
        the image, the canvas edge cut the word; centred, it is within the frame)."""
        if self.layer is None or self.store is None:
            return
        marks = output_layer(self.viewer, self.layer, MARKS_SUFFIX)
        items = sorted(self.store.frames.items())
        if marks is None and not items:
            return
        h, w = self.layer.data.shape[1:3]
        shapes = [_rectangle(f, (0, 0, h, w)) for f, _ in items]
        features = _marks_features([lab for _, lab in items], self.layer.name)
        if marks is None:
            active = self.viewer.layers.selection.active
            marks = self.viewer.add_shapes(
                ndim=3, name=f"{self.layer.name} {MARKS_SUFFIX}", face_color="transparent",
                edge_width=max(2, min(h, w) // 64),
                scale=self.layer.scale, translate=self.layer.translate,
                opacity=1.0,  # the words in their label's colour, readable over the cells
                text={"string": "{image}: {label}", "anchor": "center", "size": 11,
                      "color": NominalColorEncoding(feature="label",
                                                    colormap={"colormap": COLOURS}),
                      "translation": [0, -h / 2 + MARKS_TEXT_BELOW * h, 0]},
                features=_marks_features([], self.layer.name),
                metadata=output_metadata(self.layer, MARKS_SUFFIX))
            self.viewer.layers.selection.active = active  # the user's layer stays selected
        marks.data = []
        if shapes:
            marks.add_rectangles(shapes, edge_color=[COLOURS[lab] for _, lab in items])
        marks.features = features
        marks.refresh_text()

    def _mark_text_on_target(self) -> None:
        """Only the outlines of the image labelled carry words: another image's on it (the
        same place on the canvas) wrote theirs on the same spot."""
        for layer in self.viewer.layers:
            if layer.metadata.get(OUTPUT_KIND) == MARKS_SUFFIX:
                shown = self.layer is not None and is_output_of(layer, self.layer)
                if layer.text.visible != shown:
                    layer.text.visible = shown

    def _show_frame(self, event=None) -> None:
        if self.store is None:
            self.frame_info.setText("no image chosen")
            return
        frame = self.current_frame()
        if not 0 <= frame < self.store.n_frames:
            return
        label = self.store.frames.get(frame)
        text = f"frame {frame} ({self.store.hours(frame):g} h): "
        if label:
            meaning = "infected for" if label == "infected" else "experiment time"
            text += f"<b>{label}</b>, target {meaning} {self.store.target(frame, label):g} h"
        else:
            text += "not labelled"
        self.frame_info.setText(text)
        if not self.range_check.isChecked():
            self.range_from.setValue(frame)
            self.range_to.setValue(frame)

    def _error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    # --- CSV -------------------------------------------------------------------------
    def export_csv(self, path=None) -> Path | None:
        """All labelled images of this viewer as one label table (the trainer's format)."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export labels", "labels.csv", "CSV (*.csv)")
            if not path:
                return None
        stores = labelled_stores(self.session.annotations.values())
        left_out = labels_left_out(self.session.annotations.values())
        if not stores:
            show_warning(f"no labels of saved images to export yet{': ' * bool(left_out)}"
                         f"{left_out}")
            return None
        table = pd.concat([s.to_label_table() for s in stores], ignore_index=True)
        try:
            out = write_label_table(table, path)
        except (OutputNotWritable, LabelTableError) as exc:
            self._error(str(exc))
            return None
        self.status.setText(f"exported {len(table)} labels to {out}"
                            + (f"; {left_out}" if left_out else ""))
        return out

    def import_csv(self, path=None) -> int:
        """Take the rows of a label table that belong to the current image."""
        if self.store is None:
            self._error("choose an image layer to import labels into")
            return 0
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import labels", "", "CSV (*.csv)")
            if not path:
                return 0
        try:
            n = self.store.merge_label_table(read_label_table(path))
        except (LabelTableError, AnnotationError) as exc:
            self._error(str(exc))
            return 0
        if n == 0:
            show_warning(f"{path} has no rows for {self.store.stack}")
        if self.store.crops:
            if self.crops_layer is None:
                self._load_crops_layer(create=True)
            else:
                self._write_crops_layer()
        self._sync_controls()
        self._changed()
        return n

    # --- teardown --------------------------------------------------------------------
    def cleanup(self) -> None:
        """Unbind the keys and stop listening to the viewer (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        for key, handler in self._handlers.items():
            if self.viewer.keymap.get(coerce_keybinding(key)) is handler:  # not a newer dock's
                self.viewer.bind_key(key, None, overwrite=True)
        self.session.image_changed.disconnect(self._serve)
        self.session.image_renamed.disconnect(self._renamed)
        self.viewer.layers.events.disconnect(self._layer_list_changed)
        self.viewer.dims.events.current_step.disconnect(self._show_frame)
        self._disconnect_crops()


def _how_many(store: AnnotationStore) -> str:
    return f"{len(store.frames)} frame and {len(store.crops)} crop labels"


def _same_pixels(path: Path, data: np.ndarray) -> bool:
    """Whether the TIFF at ``path`` holds exactly ``data`` (unreadable counts as different)."""
    try:
        with open_stack(path) as stack:
            if (stack.n_frames, *stack.frame_shape) != data.shape[:3]:
                return False
            return np.array_equal(stack.frames(range(stack.n_frames)), data)
    except (OSError, ValueError):  # StackError is a ValueError
        return False

