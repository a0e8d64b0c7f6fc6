"""A user's session, run as its own process: napari first, then the plugin from its menus.

Run by tests/test_user_session.py in a fresh interpreter, because the order matters: nothing
of the plugin (no torch, no core) is imported before napari's viewer and its OpenGL context
exist, the way a person starts ``napari`` and then opens Plugins > Infection Clock. A clash
between a native library and the OpenGL driver kills such a process (issue 9, item 1), so
the test can only see it from outside.

    python user_session.py                       # open every dock, close
    python user_session.py CHECKPOINT WORKDIR    # the whole session, see ``whole_session``

Prints one line per step; exit 0 when every step did what the user expects.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from pathlib import Path

import napari
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

PLUGIN_MENU = "Infection Clock"


def threads_left_at_exit() -> None:
    """Say which threads still run when Python finalizes: it stops a daemon thread wherever
    the thread next takes the GIL, and inside C++ code (matplotlib's font reading, torch)
    that aborts the process after napari closed ("terminate called without an active
    exception")."""
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()
            and not isinstance(t, threading._DummyThread)]  # Qt's, parked in its pool
    if left:
        print(f"running at exit: {left}", flush=True)


def menu_actions(menu, path=()):
    """Every leaf action under ``menu`` as (menu path, QAction), the way a person sees them."""
    for action in menu.actions():
        sub = action.menu()
        if sub is not None:
            sub.aboutToShow.emit()  # app-model menus fill themselves when shown
            yield from menu_actions(sub, (*path, action.text()))
        elif action.text():
            yield (*path, action.text()), action


def plugin_actions(viewer, top: str) -> dict:
    """Our entries under a top-level menu ("&Plugins" or "&File"), by their title."""
    bar = viewer.window._qt_window.menuBar()
    return {
        path[-1]: action
        for path, action in menu_actions(bar)
        if path[0] == top and PLUGIN_MENU in path
    }


def open_every_dock(viewer, app) -> list[str]:
    opened = []
    for title, action in plugin_actions(viewer, "&Plugins").items():
        action.trigger()
        app.processEvents()
        dock = next(
            (d for name, d in viewer.window._wrapped_dock_widgets.items() if title in name), None
        )
        assert dock is not None and dock.isVisible(), f"dock {title!r} did not open"
        opened.append(title)
    return opened


def dock(viewer, title: str):
    """The widget inside our dock ``title`` (the magicgui object for magicgui docks)."""
    for name, wrapped in viewer.window._wrapped_dock_widgets.items():
        if title in name:
            return wrapped.inner_widget()
    raise LookupError(title)


def wait_until(app, done, what: str, timeout_s: float = 300.0) -> None:
    """Turn the event loop, as napari does while a worker runs, until ``done()``."""
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()


def press(viewer, app, key, frame: int) -> None:
    """Move the time slider to ``frame`` and press Shift+``key`` on the canvas."""
    viewer.dims.set_current_step(0, frame)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, Qt.KeyboardModifier.ShiftModifier)
    app.processEvents()


def label_range(annotate, app, first: int, last: int, button: str) -> None:
    """Tick "frames", give the range, click Infected / Uninfected."""
    annotate.range_check.setChecked(True)
    annotate.range_from.setValue(first)
    annotate.range_to.setValue(last)
    annotate.buttons[button].click()
    annotate.range_check.setChecked(False)
    app.processEvents()


def predicted_frames(predict, image) -> int:
    """Frames of ``image`` in the session's prediction table (what the plot shows)."""
    from napari_infection_clock.ui.layer_roles import image_id  # the plugin is loaded by now

    table = predict.session.results.get(image_id(image))
    return 0 if table is None else table["frame"].nunique()


def whole_session(viewer, app, checkpoint: Path, work: Path) -> None:
    """Samples, predict, label, retrain one epoch heads-only, use it, evaluate, rank, and
    predict once more, left running for ``main`` to close napari in the middle of it."""
    for title in ("Mock time-lapse (synthetic)", "Infected time-lapse (synthetic)"):
        plugin_actions(viewer, "&File")[title].trigger()
        app.processEvents()
    infected, mock = viewer.layers["infected (synthetic)"], viewer.layers["mock (synthetic)"]
    print(f"samples: {[layer.name for layer in viewer.layers]}", flush=True)

    predict = dock(viewer, "Predict infection")
    predict.image.value = infected
    predict.checkpoint.value = checkpoint
    predict.run_button.native.click()
    wait_until(app, lambda: not predict.running, "prediction")
    assert predicted_frames(predict, infected) == 48, predict.status.value
    print(f"predict: {predict.status.value}", flush=True)

    annotate = dock(viewer, "Annotate frames and crops")
    annotate.project_edit.setText(str(work / "project"))
    annotate.project_edit.editingFinished.emit()
    for layer in (mock, infected):
        viewer.layers.selection.active = layer  # a click in the layer list
        app.processEvents()
        assert layer.name in annotate.target_label.text(), annotate.target_label.text()
        if layer is mock:
            label_range(annotate, app, 0, 47, "uninfected")
        else:
            press(viewer, app, Qt.Key.Key_U, 0)
            press(viewer, app, Qt.Key.Key_U, 1)
            press(viewer, app, Qt.Key.Key_I, 3)
            label_range(annotate, app, 4, 47, "infected")
        assert "saved" in annotate.status.text(), annotate.status.text()
    print(f"label: {annotate.counts_label.text()} · {annotate.status.text()}", flush=True)

    train = dock(viewer, "Retrain on labels")
    train.mode_combo.setCurrentText("heads")
    train.epochs_spin.setValue(1)
    train.output_edit.setText(str(work / "retrained.pt"))
    train.start_button.click()
    wait_until(app, lambda: train.worker is None, "training")
    assert train.use_button.isEnabled(), train.status.text()
    print(f"train: {train.status.text()}", flush=True)
    train.use_button.click()
    app.processEvents()
    wait_until(app, lambda: not predict.running, "prediction with the new model")
    assert predicted_frames(predict, infected) == 48, predict.status.value
    print(f"predict again: {predict.status.value} with {predict.model_info.value}", flush=True)

    evaluate = dock(viewer, "Evaluate the model")
    evaluate.run_button.click()
    wait_until(app, lambda: evaluate.worker is None, "evaluation")
    assert evaluate.metrics is not None, evaluate.status.text()
    print(f"evaluate: {evaluate.status.text()}", flush=True)

    rank = dock(viewer, "What to label next")
    rank.image_combo.setCurrentText(infected.name)
    rank.rank_button.click()
    wait_until(app, lambda: rank.worker is None, "ranking")
    assert rank.list.count() > 0, rank.status.text()
    rank.next_button.click()
    app.processEvents()
    print(f"rank: {rank.status.text()}; at frame {viewer.dims.current_step[0]}", flush=True)

    predict.run_button.native.click()  # once more; napari is closed while it runs
    wait_until(app, lambda: "predicting" in predict.status.value or not predict.running,
               "a prediction under way")
    print(f"closing napari at: {predict.status.value}", flush=True)


def main(argv: list[str]) -> int:
    atexit.register(threads_left_at_exit)  # before the plugin's own: runs after them
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    opened = open_every_dock(viewer, app)
    print(f"opened: {len(opened)} docks: {', '.join(opened)}", flush=True)
    if argv:
        whole_session(viewer, app, Path(argv[0]), Path(argv[1]))
    viewer.close()
    app.processEvents()
    print("closed", flush=True)
    return 0 if len(opened) == 6 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
