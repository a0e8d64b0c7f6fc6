"""Dock widget: which frames or tiles to label next, most uncertain first.

Scores every frame (or tile) of the chosen image with the session model in a worker
(:func:`..core.uncertainty.iter_stack_uncertainty`), drops what is already labelled, and
steps the viewer through the list; a tile is outlined in a "label next" Shapes layer.
Items labelled afterwards leave the list at once (the scores are kept, no model run); a
new session model makes the scores stale, which the status line says.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..core.recipes import native_tiles_of
from ..core.stack import stack_from_array
from ..core.tiles import TileSpec, resized_tiles_note, tile_grid_shape
from ..core.uncertainty import METHODS, iter_stack_uncertainty, rank_uncertain
from . import torch_ahead
from .docking import place_form
from .layer_roles import (
    OUTPUT_KIND,
    annotation_key,
    image_id,
    image_with_id,
    input_images,
    output_metadata,
    time_setting,
)
from .messages import answered_in_view
from .scrolling import scrolling_layout
from .state import session_for
from .teardown import on_dock_closed
from .workers import Batch, Progress, Result, Run, Stop

MARKER_LAYER = "label next"  # its name and kind: one per viewer, for the image ranked last
SHOWN = 50



def _score(stop: Stop, model, meta, stack, tiles, method, passes):
    """Run body: MC dropout switches dropout on in the predictor's own copy of the model,
    so the session's model stays as is."""
    from ..core.predictor import Predictor

    predictor = Predictor(model, meta, device="auto", batch_size=None, precision="fp32")
    for done, table in enumerate(iter_stack_uncertainty(predictor, stack, tiles, method=method,
                                                        passes=passes, should_stop=stop), 1):
        yield Result(table)
        yield Progress(done, stack.n_frames, "scored")


class LabelNextWidget(QWidget):
    """Rank the chosen image's unlabelled frames/tiles by uncertainty and visit them."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        torch_ahead.start()  # what a ranking imports
        self.ranked = pd.DataFrame()
        # The last ranking: its scores (all items), the image layer and session model
        # they came from, and whether they are whole frames (else tiles).
        self._scored: pd.DataFrame | None = None
        self._scored_layer = None
        self._scored_model = None
        self._whole = True
        self._failed = False
        self._tables: list[pd.DataFrame] = []
        self._note = ""  # the last ranking's tiles resized for a native-tile model
        place_form(self, "Label next")
        layout = scrolling_layout(self)  # fits beside the other docks
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.method_combo = QComboBox()
        self.method_combo.addItems(METHODS)
        self.passes_spin = QSpinBox(minimum=2, maximum=100, value=8)
        self.tile_spin = QSpinBox(minimum=0, maximum=4096, singleStep=32, value=0)
        self.tile_spin.setSpecialValueText("whole frame")
        form.addRow("image", self.image_combo)
        form.addRow("uncertainty", self.method_combo)
        form.addRow("dropout passes", self.passes_spin)
        form.addRow("tile size", self.tile_spin)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.rank_button = QPushButton("Rank")
        self.rank_button.clicked.connect(self.rank)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.next_button = QPushButton("Next ▶")
        self.next_button.clicked.connect(self.go_next)
        for b in (self.rank_button, self.stop_button, self.next_button):
            row.addWidget(b)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        answered_in_view(self.status, self.rank_button, self.stop_button)
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self.go_to)
        layout.addWidget(self.list)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.session.image_changed.connect(self._on_image_changed)
        self.session.image_renamed.connect(self._refresh_layers)
        self.session.labels_changed.connect(self._on_labels_changed)
        self.session.model_changed.connect(self._on_model_changed)
        on_dock_closed(self, self.cleanup)
        self._refresh_layers()

    def _refresh_layers(self, event=None) -> None:
        """Offer the input images (never the plugin's own layers) by name, each known by
        its id (a renamed image stays chosen); else the one in view."""
        current = self.image_combo.currentData()
        self.image_combo.clear()
        for layer in input_images(self.viewer):
            self.image_combo.addItem(layer.name, image_id(layer))
        index = self.image_combo.findData(current)
        if current is not None and index >= 0:
            self.image_combo.setCurrentIndex(index)
        else:
            self._on_image_changed(self.session.image)

    def _on_image_changed(self, image) -> None:
        index = -1 if image is None else self.image_combo.findData(image_id(image))
        if index >= 0 and self.worker is None:
            self.image_combo.setCurrentIndex(index)

    def rank(self) -> bool:
        """Score the chosen image in a worker; the list fills when it is done."""
        if self.worker is not None:
            return False
        layer = image_with_id(self.viewer, self.image_combo.currentData())
        if self.session.model is None:
            return self._fail("no model: load a checkpoint or train one first")
        if layer is None:
            return self._fail("choose an image layer")
        native = native_tiles_of(self.session.model.meta.recipe)
        interval = time_setting(layer, self.session.model.meta,
                                self.session.labels_of(layer)).frame_interval_h
        stack = stack_from_array(layer.data, "TYXS" if layer.rgb else "TYX", layer.name,
                                 interval)
        tiles = TileSpec(tile_size=self.tile_spin.value() or native, model_tiles=native)
        try:  # frames smaller than the tiles (or than a native-tile model's): said before a run
            tile_grid_shape(*stack.frame_shape, tiles)
        except ValueError as exc:
            return self._fail(str(exc))
        if native is not None and self.tile_spin.value() == 0:
            # As the prediction dock does: whole frames shrunk to its tiles would be ranked
            # with confidence all the same.
            self.tile_spin.setValue(native)
            self.status.setText(f"the model was trained on {native} px tiles, not whole frames: "
                                f"the tile size is now {native} px; click Rank again")
            return False
        self._note = resized_tiles_note(native, tiles.tile_size)
        self.status.setText("scoring..." + (f" {self._note}" if self._note else ""))
        if self._note:
            show_warning(self._note)
        self._failed = False
        self._tables: list[pd.DataFrame] = []
        model = self.session.model
        whole = self.tile_spin.value() == 0
        self.worker = Run(
            _score, model.model, model.meta, stack, tiles, self.method_combo.currentText(),
            self.passes_spin.value(), on_batch=self._on_batch,
            on_end=lambda stopped: self._done(layer, model, whole), parent=self)
        self.rank_button.setEnabled(False)
        self.worker.start()
        return True

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _on_batch(self, batch: Batch) -> None:
        self._tables += batch.results
        if batch.progress is not None:
            self.status.setText(f"scored {batch.progress.done}/{batch.progress.total} frames"
                                + (f"; {self._note}" if self._note else ""))
        if batch.failed is not None:
            self._failed = True
            self._fail(f"ranking failed: {batch.failed.message}")

    def _done(self, layer, model, whole: bool) -> None:
        self.worker = None
        self.rank_button.setEnabled(True)
        if self._failed:
            return
        tables = self._tables
        self._scored = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        self._scored_layer, self._scored_model, self._whole = layer, model, whole
        self._show_ranking()

    def _scored_key(self) -> str:
        """The annotation key of the ranked image, asked anew: saving an in-memory image
        to a project folder moves its labels from ``memory:ID`` to the file's path."""
        return annotation_key(self._scored_layer)

    def _show_ranking(self) -> None:
        """List the scored items that are still unlabelled, keeping the selected one."""
        selected = self._selected_key()
        store = self.session.annotations.get(self._scored_key())
        frames = store.frames if store is not None else {}
        boxes = list(store.crops) if store is not None else []
        self.ranked = rank_uncertain(self._scored, frames, boxes)
        self.list.blockSignals(True)
        self.list.clear()
        for row in self.ranked.head(SHOWN).itertuples(index=False):
            where = "" if self._whole else f" · box ({row.y0}, {row.x0}, {row.y1}, {row.x1})"
            self.list.addItem(f"frame {row.frame}{where} · p(infected) {row.p_infected:.2f} · "
                              f"entropy {row.entropy:.2f} · spread {row.p_std:.3f}")
        keys = self._shown_keys()
        self.list.setCurrentRow(keys.index(selected) if selected in keys else -1)
        self.list.blockSignals(False)
        self._show_status()

    def _show_status(self) -> None:
        text = f"{len(self.ranked)} unlabelled items ranked; most uncertain first"
        if self._scored_model is not self.session.model:
            text += ". The model changed since: these are the old model's scores; press Rank"
        elif self._note:
            text += f"; {self._note}"
        self.status.setText(text)

    def _shown_keys(self) -> list[tuple[int, ...]]:
        """(frame, y0, x0, y1, x1) of each listed item, in list order."""
        if self.ranked.empty:
            return []
        shown = self.ranked[["frame", "y0", "x0", "y1", "x1"]].head(SHOWN).astype(int)
        return list(shown.itertuples(index=False, name=None))

    def _selected_key(self) -> tuple[int, ...] | None:
        keys, index = self._shown_keys(), self.list.currentRow()
        return keys[index] if 0 <= index < len(keys) else None

    def _on_labels_changed(self, stack: str) -> None:
        if self._scored is not None and stack == self._scored_key():
            self._show_ranking()

    def _on_model_changed(self, model) -> None:
        if self._scored is not None and self.worker is None:
            self._show_status()

    def go_next(self) -> None:
        """Step to the next most uncertain item."""
        if self.list.count():
            self.list.setCurrentRow(min(self.list.currentRow() + 1, self.list.count() - 1))

    def go_to(self, index: int) -> None:
        if not 0 <= index < len(self.ranked):
            return
        row = self.ranked.iloc[index]
        self._show_ranked_image()
        self.viewer.dims.set_current_step(0, int(row.frame))
        if not self._whole:
            box = [int(row[c]) for c in ("y0", "x0", "y1", "x1")]
            f = int(row.frame)
            rect = np.array([[f, box[0], box[1]], [f, box[0], box[3]], [f, box[2], box[3]],
                             [f, box[2], box[1]]], float)
            belongs = output_metadata(self._scored_layer, MARKER_LAYER)
            marker = next((layer for layer in self.viewer.layers
                           if layer.metadata.get(OUTPUT_KIND) == MARKER_LAYER), None)
            if marker is not None:
                marker.data = [rect]
                marker.metadata.update(belongs)  # it goes when this image is removed
            else:
                self.viewer.add_shapes([rect], ndim=3, name=MARKER_LAYER, edge_color="yellow",
                                       face_color="transparent", edge_width=2,
                                       metadata=belongs)

    def _show_ranked_image(self) -> None:
        """Make the ranked image the one in view (shown and selected) unless it, or a layer
        standing for it (its crops), already is: the annotation dock labels the image in
        view, and the user steps to a suggestion to label it there."""
        layer = self._scored_layer
        if layer is None or layer not in self.viewer.layers or self.session.image is layer:
            return
        layer.visible = True
        self.viewer.layers.selection.active = layer

    def _fail(self, message: str) -> bool:
        self.status.setText(message)
        show_error(message)
        return False

    def cleanup(self) -> None:
        """Stop a running ranking and stop listening to the viewer (the dock was closed)."""
        self.stop()
        self.viewer.layers.events.inserted.disconnect(self._refresh_layers)
        self.viewer.layers.events.removed.disconnect(self._refresh_layers)
        self.session.image_changed.disconnect(self._on_image_changed)
        self.session.image_renamed.disconnect(self._refresh_layers)
        self.session.labels_changed.disconnect(self._on_labels_changed)
        self.session.model_changed.disconnect(self._on_model_changed)
