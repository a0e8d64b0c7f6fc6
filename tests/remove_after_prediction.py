"""A user's steps in a fresh process: napari first, open the infected sample, predict a
tile grid from the Plugins-menu dock, select the image in the layer list and click the
trash button. Prints the layers left; exits with napari's own status (-11: a crash)."""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-infection-clock"


def turn(n: int) -> None:
    for _ in range(n):
        QApplication.processEvents()
        time.sleep(0.01)


viewer = napari.Viewer(show=True)
[image] = viewer.open_sample(PLUGIN, "infected")
predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")[1]
predict.checkpoint.value = sys.argv[1]
predict.mode.value = "tile grid"
predict.tile_size.value = 128
predict.device.value = "cpu"
predict.last.value = 3
done: list[str] = []
predict.finished.connect(done.append)
predict.run_button.native.click()
while not done:
    turn(1)
print(done[0], flush=True)
turn(50)
viewer.layers.selection = {image}
turn(1)
viewer.window._qt_viewer.layerButtons.deleteButton.click()
turn(200)
print("left:", sorted(layer.name for layer in viewer.layers), flush=True)
