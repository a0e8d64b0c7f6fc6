"""A user's steps in a fresh process: napari first, a long well, a tile-grid prediction from
the Plugins-menu dock and, once the run is provably under way (its first frames shown), the
image selected and the trash button clicked. Prints how far the run was, how it ended and
the layers left; exits with napari's own status (-11: a crash), or 3 when the run has not
ended a minute after the click (the removal did not stop it)."""

import os
import sys
import time

import napari
from long_well import FRAMES, long_well  # this script's folder, tests/
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-infection-clock"
#: Seconds a stopped run may take to end (its last batch, then a step per event-loop turn).
ENDS_WITHIN_S = 60


def turn(n: int) -> None:
    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.01)


viewer = napari.Viewer(show=True)
data, meta = long_well("infected")
image = viewer.add_image(data, name="long well", metadata=meta)
predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
predict.checkpoint.value = sys.argv[1]
predict.mode.value = "tile grid"
predict.tile_size.value = 16
predict.batch_size.value = 16
predict.device.value = "cpu"
done: list[str] = []
predict.finished.connect(done.append)
predict.run_button.native.click()
while predict.progress_bar.value < 1 and not done:
    turn(1)
outputs = [layer.name for layer in viewer.layers if layer is not image]
print(f"under way: {predict.progress_bar.value} of {FRAMES} frames shown, ended: {bool(done)}, "
      f"outputs: {len(outputs)}", flush=True)
viewer.layers.selection = {image}
turn(1)
viewer.window._qt_viewer.layerButtons.deleteButton.click()
clicked = time.monotonic()
while not done and time.monotonic() - clicked < ENDS_WITHIN_S:
    turn(1)
if not done:
    print(f"still running {ENDS_WITHIN_S} s after the click: {predict.status.value}", flush=True)
    os._exit(3)  # not Qt's exit: its thread pool would wait for the run
print(done[0], flush=True)
turn(200)
print("left:", sorted(layer.name for layer in viewer.layers), flush=True)
