"""A user's session, run as its own process: napari first, then the plugin from its menus.

Run by tests/test_user_session.py in a fresh interpreter, because the order matters: nothing
of the plugin (no torch, no core) is imported before napari's viewer and its OpenGL context
exist, the way a person starts ``napari`` and then opens Plugins > Infection Clock. A clash
between a native library and the OpenGL driver kills such a process (issue 9, item 1), so
the test can only see it from outside.

    python user_session.py                       # open every dock, close
    python user_session.py CHECKPOINT WORKDIR    # the whole session, see ``whole_session``
    python user_session.py --torch-held          # open every dock while torch cannot load

Prints one line per step; exit 0 when every step did what the user expects.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
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


class TorchHeld(importlib.abc.MetaPathFinder):
    """Keeps any thread but the GUI thread from running torch's ``__init__`` until
    ``release``: a machine where torch takes long to import (seconds on 2 cores). The docks
    must open all the same, without torch: had the GUI thread loaded it, or waited for
    another thread's import of it, napari froze for that long. Records which threads import
    torch (an audit hook)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loaded_by: list[str] = []
        self.libraries_open: list[bool] = []  # at each held import: torch's CPU library open?
        sys.meta_path.insert(0, self)
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple) -> None:
        if event == "import" and args[0] == "torch":
            self.loaded_by.append(threading.current_thread().name)

    def find_spec(self, name, path=None, target=None):
        # called under Python's global import lock: the waiting is the loader's
        if name != "torch" or threading.current_thread() is threading.main_thread():
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None:
            spec.loader = _HeldLoader(spec.loader, self)
        return spec


class _HeldLoader(importlib.abc.Loader):
    def __init__(self, loader, held: TorchHeld) -> None:
        self.loader, self.held = loader, held

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with open("/proc/self/maps") as maps:
            self.held.libraries_open.append("libtorch_cpu" in maps.read())
        if not self.held.release.wait(120):
            print("torch held 120 s: the GUI thread waited for it", flush=True)
        self.loader.exec_module(module)


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


def docks_while_torch_is_held(viewer, app) -> None:
    """After the docks opened without torch, it loads; then the device pickers offer what
    torch found."""
    predict, train = dock(viewer, "Predict infection"), dock(viewer, "Retrain on labels")
    def shown(combo) -> list[str]:
        return [combo.itemText(i) for i in range(combo.count())]

    print(f"devices before torch: {shown(predict.device.native)}", flush=True)
    held.release.set()
    wait_until(app, lambda: shown(train.device_combo)[0] != "auto", "the device pickers")
    print(f"devices once torch loaded: {shown(predict.device.native)} and "
          f"{shown(train.device_combo)}; "
          f"batch size {predict.batch_size.value}; torch imported by {held.loaded_by}",
          flush=True)
    print(f"torch's libraries open before its import ran: {held.libraries_open}", flush=True)
    plugin_actions(viewer, "&File")["Infected time-lapse (synthetic)"].trigger()
    app.processEvents()  # napari resets a magicgui dock's choices when a layer comes
    print(f"devices after an image was opened: {shown(predict.device.native)}", flush=True)


def main(argv: list[str]) -> int:
    atexit.register(threads_left_at_exit)  # before the plugin's own: runs after them
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    opened = open_every_dock(viewer, app)
    print(f"opened: {len(opened)} docks: {', '.join(opened)}", flush=True)
    if argv == ["--torch-held"]:
        loaded = hasattr(sys.modules.get("torch"), "Tensor")
        print(f"torch loaded while the docks opened: {loaded}", flush=True)
        docks_while_torch_is_held(viewer, app)
    elif argv:
        whole_session(viewer, app, Path(argv[0]), Path(argv[1]))
    viewer.close()
    app.processEvents()
    print("closed", flush=True)
    return 0 if len(opened) == 6 else 1


if __name__ == "__main__":
    held = TorchHeld() if sys.argv[1:] == ["--torch-held"] else None
    sys.exit(main(sys.argv[1:]))
