"""A user's session, run as its own process: napari first, then the plugin from its menus.

Run by tests/test_user_session.py in a fresh interpreter, because the order matters: nothing
of the plugin (no torch, no core) is imported before napari's viewer and its OpenGL context
exist, the way a person starts ``napari`` and then opens Plugins > Infection Clock. A clash
between a native library and the OpenGL driver kills such a process (issue 9, item 1), so
the test can only see it from outside. Prints one ``opened:`` line; exit 0 when all opened.
"""

from __future__ import annotations

import sys

import napari
from qtpy.QtWidgets import QApplication

PLUGIN_MENU = "Infection Clock"


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


def main() -> int:
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    app.processEvents()
    opened = open_every_dock(viewer, app)
    print(f"opened: {len(opened)} docks: {', '.join(opened)}", flush=True)
    viewer.close()
    app.processEvents()
    return 0 if len(opened) == 6 else 1


if __name__ == "__main__":
    sys.exit(main())
