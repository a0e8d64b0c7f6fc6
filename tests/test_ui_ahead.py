"""What the first prediction's layers and texts need is ready before a run (fresh process).

napari renders the canvas font's glyphs, makes the text overlay's visual (the readout) and
builds its shaders,
imports scikit-image's colour conversions and has vispy compute its line dash patterns (for
the first Labels layer's polygon overlay) the first time they are needed: on the GUI
thread, in the middle of the first prediction (docs/benchmarks.md, GUI-thread stalls). The
prediction dock does all of it ahead, in small steps or in the background, while the
viewer idles.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import sys, time
import napari
from qtpy.QtWidgets import QApplication

import warnings
warnings.filterwarnings("error", message=".*text_overlay.*")  # napari 0.9 deprecated it
viewer = napari.Viewer(show=True)
viewer.window.add_plugin_dock_widget("napari-infection-clock", "Predict infection")
app = QApplication.instance()
info = viewer.window._qt_viewer.canvas.font_info()  # napari's canvas font (private)
font = info.font_manager.get_font(info.face)
wanted = set("t = 12.50 h  (frame 25 of 48) p(infected) 0.53 · uninfected · infected for 3.2 h"
             " · onset 1.0 h (this frame) · no onset no information: a flat or too small"
             " crop, not answered 0.0 0.2 0.4 0.6 0.8 1.0 -1") - {" "}
from vispy.visuals.line import dash_atlas
def patterns():  # vispy caches the patterns every DashAtlas (one per line visual) computes
    return dash_atlas._make_pattern.cache_info().currsize
canvas = viewer.window._qt_viewer.canvas  # private: napari's vispy canvas
frames = []
canvas.native.frameSwapped.connect(lambda: frames.append(time.monotonic()))
def readout_made():  # the text overlay's visual, made ahead with nothing to show
    return viewer.canvas.overlays.text in canvas._viewer_overlay_to_visual
def readout_drawn():  # and drawn once: vispy has built its shaders
    made = canvas._viewer_overlay_to_visual.get(viewer.canvas.overlays.text)
    made = made[0] if isinstance(made, list) else made
    return made is not None and not made.node._program._need_build
def ready():
    return (wanted <= set(font._glyphs) and "skimage.color.colorconv" in sys.modules
            and patterns() >= 13 and readout_drawn())
deadline = time.monotonic() + 120  # a loaded machine: torch loads meanwhile (ui.torch_ahead)
while time.monotonic() < deadline and not ready():
    app.processEvents()
    time.sleep(0.02)
print("missing glyphs:", repr("".join(sorted(wanted - set(font._glyphs)))))
print("colour conversions imported:", "skimage.color.colorconv" in sys.modules)
print("dash patterns computed:", patterns())
print("readout made:", readout_made(), "drawn:", readout_drawn(),
      "shows:", repr(viewer.canvas.overlays.text.text.strip()))
window = canvas.native.window().windowHandle()
print("canvas frames shown:", len(frames), "size:", canvas.native.width(),
      canvas.native.height(), "repaint asked:", canvas._scene_canvas._update_pending,
      "visible:", canvas.native.isVisible(), "exposed:", window is not None and window.isExposed(),
      "updates enabled:", canvas.native.updatesEnabled(), file=sys.stderr)
viewer.close()
"""


def test_the_readouts_glyphs_and_the_labels_layers_needs_are_ready_before_a_run():
    assert os.environ.get("DISPLAY"), "needs a display (pytest-xvfb)"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "missing glyphs: ''" in proc.stdout, proc.stdout
    assert "colour conversions imported: True" in proc.stdout, proc.stdout
    assert "dash patterns computed: 13" in proc.stdout, proc.stdout
    assert "readout made: True drawn: True shows: ''" in proc.stdout, proc.stdout + proc.stderr[-3000:]
