"""A new visual's first draw on the canvas: what it costs the GUI thread (issue 9, item 3).

vispy parses each new program's GLSL for its variables; its comment stripping is a
regular expression that backtracks over every line (30-60 ms for a text visual's 80 KB
program). With a dock of the plugin open that parse is linear (ui.shader_parsing), and
gives the variables vispy's own parse gives.
"""

from __future__ import annotations

import re

import numpy as np
from qtpy.QtWidgets import QApplication

from napari_infection_clock.ui.shader_parsing import COMMENTS

PLUGIN = "napari-infection-clock"


def _text_program(viewer, layer):
    node = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node  # napari's (private)
    return node.text._program


def test_a_new_visuals_first_draw_parses_its_shaders_without_the_backtracking_pattern(
        make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Predict infection")
    handed = []
    real_sub = re.sub

    def recording_sub(pattern, repl, string, count=0, flags=0):
        handed.append(pattern)
        return real_sub(pattern, repl, string, count=count, flags=flags)

    monkeypatch.setattr(re, "sub", recording_sub)
    layer = viewer.add_shapes([np.array([[0, 0], [0, 10], [10, 10], [10, 0]])],
                              shape_type="rectangle", text="a")
    viewer.window._qt_viewer.canvas.native.repaint()  # the first draw of its visuals
    QApplication.processEvents()
    program = _text_program(viewer, layer)
    assert not program._need_build, "the text visual was not drawn"
    assert COMMENTS[0] not in handed, "vispy's backtracking comment pattern ran"

    parsed = dict(program._code_variables)
    monkeypatch.undo()
    from vispy.gloo import program as vispy_program

    monkeypatch.setattr(vispy_program, "re", re)  # vispy's own parse, its regex
    program._parse_variables_from_code(update_variables=False)
    assert parsed == program._code_variables
    assert {"u_npix", "a_position"} <= set(parsed)
