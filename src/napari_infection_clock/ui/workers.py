"""One way for every dock to run long work: a generator in a thread, typed updates, coalesced.

A run's body is a generator that gets a :class:`Stop` and yields :class:`Progress`,
:class:`Result` and :class:`Failed`. It runs on a niced thread of its own (a napari thread
worker starts it and waits for it) and puts its updates on a queue; it never signals the GUI per item. A :class:`QTimer` on the GUI thread drains
the queue a few times per second and hands the dock one :class:`Batch`: all results since
the last tick, the latest progress, the first failure. So the GUI thread does a bounded
amount of work per tick however fast the worker goes, events never pile up behind a slow
handler, and the dock paints layers and plots a few times per second, not per item.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QTimer

from .threads import start_thread

#: Milliseconds between two hand-overs of a run's updates to its dock.
DRAIN_MS = 250
#: Nice of a run's body thread (Linux): when the CPU is busy the GUI thread goes first.
WORKER_NICE = 10
#: Milliseconds between a click that starts a run and its body thread's start.
START_AFTER_MS = 60


@dataclass
class Progress:
    """Where a run stands: ``done`` of ``total`` steps, and what it is doing."""

    done: int
    total: int
    text: str = ""


@dataclass
class Result:
    """A piece of a run's result (a predicted frame, an epoch, a model, a table)."""

    value: object


@dataclass
class Failed:
    """A failed run: a short message for the status line, and the long cause on demand."""

    message: str
    details: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> Failed:
        """An unexpected error, named by its type so the user can report it."""
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(f"{type(exc).__name__}: {exc}", details)


class Stop:
    """A run's cooperative stop: the dock sets it, the body polls it between steps."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


@dataclass
class Batch:
    """What a run yielded since the last tick."""

    results: list = field(default_factory=list)
    progress: Progress | None = None
    failed: Failed | None = None


def import_ahead(*steps: str | Callable[[], object]) -> None:
    """Import the modules named in ``steps`` and call the functions among them, in turn, on
    a background thread of normal priority: what a run (or napari, making its first output
    layers) would do later on the GUI thread. An import holds the GIL; in a niced run's
    thread it held the GUI thread for half a second."""

    def ahead() -> None:
        for step in steps:
            if isinstance(step, str):
                importlib.import_module(step)
            else:
                step()

    start_thread(ahead, "infection-clock imports")  # at exit, waited for


@functools.cache
def docks_ahead() -> None:
    """A stack was opened (the plugin's reader, a sample): import on a thread, while the
    person looks at it, what the first dock imports that opening a stack did not: pandas,
    0.4 s of that dock's opening on the GUI thread. Once a session."""
    import_ahead("pandas")


@functools.cache
def _run_threads() -> int:
    """One fewer than torch's own choice (or OMP_NUM_THREADS), taken once: were the count
    process-wide in some torch build, runs would not go on lowering it."""
    import torch

    return max(1, torch.get_num_threads() - 1)


def _yield_cpu_to_the_gui() -> None:
    """Lower this thread's priority (Linux nice is per thread; torch's CPU threads started
    from it inherit it), so a run on a busy machine slows down rather than the GUI; and
    leave the GUI and its OpenGL renderer (Mesa's llvmpipe draws on the CPU) a core: torch's
    threads wait for each other at every operation, so one that yields to the GUI stalls
    them all. torch's thread count is per thread (OpenMP's), this one's only."""
    import torch

    torch.set_num_threads(_run_threads())
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, max(current, WORKER_NICE))


class Run(QObject):
    """A dock's long work: ``body(stop, *args)`` in a thread, its updates handed over in
    batches to ``on_batch`` and, once everything is handed over, ``on_end(stopped)``;
    then it deletes itself (its Python attributes, such as :meth:`stop`, still answer).
    Nothing of the run outlives it on the Run: the body's arguments (a dock's model, say)
    are handed to the body's thread, and the callbacks are dropped at the end, since the
    Run and its napari worker hold each other (a cycle waits for a full collection, rare
    while a dock is open: :mod:`.gc_freeze`).

    Both callbacks run on the GUI thread. A body's exception ends the run with
    :meth:`Failed.of` (superqt's worker would turn a raised RuntimeError, most torch
    errors, into a warning and never report it).
    """

    def __init__(
        self,
        body: Callable[..., Iterator],
        *args,
        on_batch: Callable[[Batch], None],
        on_end: Callable[[bool], None],
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self.stop_requested = Stop()
        self._queue: deque = deque()
        self._on_batch, self._on_end = on_batch, on_end
        self._body_ended = False
        self._draining = False
        self.ended = False
        self._timer = QTimer(self)
        self._timer.setInterval(DRAIN_MS)
        self._timer.timeout.connect(self._drain)
        self._work = (body, args)  # taken by the body's thread
        self.worker = create_worker(self._pump, _start_thread=False)
        self.worker.finished.connect(self._on_body_ended)

    def _pump(self) -> None:
        """Worker thread: run the body on a thread of its own and wait for it. The body's
        thread is niced, and a nice cannot be undone without privileges: napari's pool
        threads, which every plugin's workers reuse, must keep their priority."""
        (body, args), self._work = self._work, None
        thread = start_thread(self._run_body, "infection-clock run", args=(body, args),
                              stop=self.stop_requested.set)  # at exit too
        del body, args  # the thread holds them until the body is done
        thread.join()

    def _run_body(self, body, args) -> None:
        """The body's thread: run it, queue what it yields (a deque append is atomic)."""
        _yield_cpu_to_the_gui()
        try:
            for update in body(self.stop_requested, *args):
                self._queue.append(update)
        except Exception as exc:  # noqa: BLE001  reported to the user, see the class
            self._queue.append(Failed.of(exc))

    def start(self) -> Run:
        """Start the body's thread :data:`START_AFTER_MS` later: the click that started the
        run changed the dock (status, busy bar, buttons), and that repaint comes first."""
        self._timer.start()
        QTimer.singleShot(START_AFTER_MS, self._start_body)  # not if the run is gone
        return self

    def _start_body(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Ask the body to stop at its next check; the run ends as usual."""
        self.stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self.stop_requested()

    def _on_body_ended(self) -> None:
        self._body_ended = True
        self._drain()

    def _drain(self) -> None:
        """Hand over everything queued so far (never re-entered: a callback that spins the
        event loop cannot nest a second hand-over)."""
        if self._draining or self.ended:
            return
        self._draining = True
        try:
            batch = Batch()
            while self._queue:
                update = self._queue.popleft()
                if isinstance(update, Progress):
                    batch.progress = update
                elif isinstance(update, Failed):
                    batch.failed = batch.failed or update
                else:
                    batch.results.append(update.value if isinstance(update, Result) else update)
            if batch.results or batch.progress or batch.failed:
                self._on_batch(batch)
            if self._body_ended and not self._queue:
                self.ended = True
                self._timer.stop()
                on_end, self._on_batch, self._on_end = self._on_end, None, None
                on_end(self.stopping)  # a dock's lambda may hold its run's model
                self.deleteLater()  # a child of its dock: it would stay as long as the dock
        finally:
            self._draining = False
