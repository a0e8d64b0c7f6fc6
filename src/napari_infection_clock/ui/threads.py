"""The plugin's background threads, stopped and waited for before Python exits.

When the interpreter finalizes, a daemon thread still running is stopped wherever it next
takes the GIL, by unwinding its stack (``pthread_exit``). Inside C++ code that unwinding
ends in ``std::terminate``: the render thread drawing a figure's text (matplotlib's
FreeType reads its font file through a Python callback) aborted the process after napari
had closed, "terminate called without an active exception", one exit in eight when
the docks had just opened. So every thread started here is asked to stop and joined at
exit (``atexit`` runs while the interpreter is still whole), and nothing of the plugin
runs Python when it finalizes.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable

_running: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # thread -> its stop


def start_thread(target: Callable, name: str, *, args: tuple = (),
                 stop: Callable[[], None] | None = None) -> threading.Thread:
    """Run ``target(*args)`` on a daemon thread that, when Python exits, is asked to
    ``stop`` (when given: work that would go on) and waited for."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    _running[thread] = stop
    thread.start()
    return thread


@atexit.register
def _finish() -> None:
    """Stop every thread still running, then wait for each (after the viewer closed)."""
    threads = list(_running.items())
    for _thread, stop in threads:
        if stop is not None:
            stop()
    for thread, _stop in threads:
        thread.join()
