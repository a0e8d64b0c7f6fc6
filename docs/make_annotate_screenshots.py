"""Regenerate the annotate-and-retrain walkthrough's screenshots from a real napari viewer.

    xvfb-run -a python docs/make_annotate_screenshots.py

Synthetic wells are written to a temporary folder, labelled through the annotation dock,
a small resnet18 is retrained in the training dock (CPU, a few minutes), then evaluated
and asked what to label next. The docks are opened from the Plugins menu (they share one
tab group), in napari's default dark theme. Images go to docs/images/annotate-*.png
(palette PNGs).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from make_screenshots import grab, save_small

PLUGIN = "napari-infection-clock"


def shot(app, viewer, name: str) -> None:
    """Fit the image in the canvas, close notification toasts, grab the whole window."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    window = viewer.window._qt_window
    for toast in window.findChildren(NapariQtNotification):
        toast.close()
    wait(app, lambda: True)  # let the docks settle the canvas size first
    viewer.reset_view()
    wait(app, lambda: True)
    save_small(grab(window), name)


def open_dock(viewer, title: str):
    """The dock ``title`` as Plugins > Infection Clock opens it."""
    return viewer.window.add_plugin_dock_widget(PLUGIN, title)[1]


def wait(app, done, timeout=900.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() > end:
            raise TimeoutError("the worker did not finish")
    for _ in range(20):
        app.processEvents()


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_infection_clock.core.annotations import open_annotations
    from napari_infection_clock.core.synthetic import write_research_dataset
    from napari_infection_clock.ui.state import session_for

    folder = Path(tempfile.mkdtemp(prefix="annotate-shots-"))
    paths = write_research_dataset(folder / "data", n_infected=3, n_mock=3, n_frames=32, size=96,
                                   seed=7)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    window = viewer.window._qt_window
    window.resize(1500, 950)
    session = session_for(viewer)

    # the other wells were labelled earlier: their sidecars are in the session
    for path in paths[1:]:
        store, sidecar = open_annotations(path, 32)
        if path.parent.name == "infected":
            store.set_condition("infected", onset_h=1.0)
            store.label_frames(range(2, 32), "infected")
        else:
            store.set_condition("mock")
            store.label_frames(range(32), "uninfected")
        store.save(sidecar)
        session.annotations[store.stack] = store

    viewer.open(str(paths[0]), plugin=PLUGIN)
    annotate = open_dock(viewer, "Annotate frames and crops")
    annotate.condition_combo.setCurrentText("infected")
    annotate.onset_spin.setValue(1.0)
    annotate.onset_spin.editingFinished.emit()
    annotate.range_check.setChecked(True)
    annotate.range_from.setValue(4)
    annotate.range_to.setValue(31)
    annotate.label_current("infected")
    annotate.range_check.setChecked(False)
    viewer.dims.set_current_step(0, 1)
    annotate.label_current("infected")  # before the onset: flagged
    viewer.dims.set_current_step(0, 24)
    crops = annotate.show_crops_layer()
    crops.add_rectangles([np.array([[24, 8, 8], [24, 8, 44], [24, 44, 44], [24, 44, 8]])])
    annotate.crop_label_combo.setCurrentText("uninfected")
    crops.add_rectangles([np.array([[24, 50, 50], [24, 50, 90], [24, 90, 90], [24, 90, 50]])])
    viewer.layers.selection.active = viewer.layers[0]
    shot(app, viewer, "annotate-labels.png")

    train = open_dock(viewer, "Retrain on labels")
    train.start_combo.setCurrentText("random")
    train.arch_combo.setCurrentText("resnet18")
    train.size_spin.setValue(48)
    train.mode_combo.setCurrentText("full")
    train.epochs_spin.setValue(5)
    train.lr_spin.setValue(1e-3)
    train.device_combo.setCurrentText("cpu")
    train.output_edit.setText(str(folder / "retrained.pt"))
    train.auto_check.setChecked(True)
    train.start()
    wait(app, lambda: train.worker is None)
    shot(app, viewer, "annotate-training.png")

    evaluate = open_dock(viewer, "Evaluate the model")
    evaluate.source_combo.setCurrentIndex(1)
    evaluate.evaluate()
    wait(app, lambda: evaluate.worker is None)
    evaluate.tabs.setCurrentIndex(3)  # the time scatter
    shot(app, viewer, "annotate-evaluation.png")

    label_next = open_dock(viewer, "What to label next")
    label_next.image_combo.setCurrentText(viewer.layers[0].name)
    label_next.tile_spin.setValue(48)
    label_next.rank()
    wait(app, lambda: label_next.worker is None)
    label_next.next_button.click()
    shot(app, viewer, "annotate-label-next.png")
    viewer.close()


if __name__ == "__main__":
    main()
