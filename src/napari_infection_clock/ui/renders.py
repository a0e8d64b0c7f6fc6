"""Matplotlib figures rendered off the GUI thread (issue 9: the GUI freezes).

A docked figure's draw, its layout and then every artist into an Agg buffer, costs
150-400 ms on a 2-core machine, most of it Python (text above all); on the GUI thread it
froze the viewer that long. Here one background thread, shared by every docked figure,
renders one figure at a time into a renderer of its own (:class:`RenderJob`); the GUI
thread is handed the finished job through a queued Qt signal and shows it
(``figures.ThemedCanvas``). A render never overlaps a change of its figure: whoever
changes the figure cancels the render first (:meth:`RenderJob.cancel`), which stops at
its next drawing call (every one of :class:`CancellableRenderer`'s checks) within a few
ms; the GUI thread waits for that, :data:`STOP_WAIT_S` at most.

matplotlib allows this: its font cache is per thread (``font_manager.get_font`` keys on
the thread) and text metrics are cached per renderer. The render does what
``Figure.draw`` does except its ``draw_event``, whose callbacks belong to the GUI thread:
the canvas sends it when it shows the render.
"""

from __future__ import annotations

import queue
import threading
import traceback
import weakref

from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.image import _draw_list_compositing_images
from qtpy.QtCore import QObject, Signal

from .threads import start_thread

#: Seconds the GUI thread waits at most for a cancelled render to stop (it takes a few ms).
STOP_WAIT_S = 0.2

_here = threading.local()  # .job: the render under way on this thread


class Cancelled(BaseException):
    """A render stopped: its figure is about to change. A BaseException, as asyncio's
    CancelledError, so that no ``except Exception`` in matplotlib's drawing takes it."""


def job_here() -> RenderJob | None:
    """The render under way on the calling thread (None on the GUI thread)."""
    return getattr(_here, "job", None)


def _check() -> None:
    job = job_here()
    if job is not None and job.cancelled:
        raise Cancelled


def _checked(method):
    def call(*args, **kwargs):
        _check()
        return method(*args, **kwargs)
    return call


class CancellableRenderer(RendererAgg):
    """Agg's renderer whose every drawing and text-measuring call first stops a cancelled
    render; calls from another thread than the render's (the GUI thread measuring text
    on the renderer shown) are never stopped."""

    def _update_methods(self):
        super()._update_methods()
        for name in ("draw_gouraud_triangles", "draw_image", "draw_markers",
                     "draw_path_collection", "draw_quad_mesh"):
            setattr(self, name, _checked(getattr(self, name)))

    draw_path = _checked(RendererAgg.draw_path)
    draw_text = _checked(RendererAgg.draw_text)
    draw_mathtext = _checked(RendererAgg.draw_mathtext)
    get_text_width_height_descent = _checked(RendererAgg.get_text_width_height_descent)


class RenderJob:
    """One render of ``figure`` into a renderer of ``size`` (width, height, dpi): ``spare``
    (a renderer no one shows) when it has that size, else a new one. ``prepare(figure)``
    runs first, in the render (the theme's colours). ``on_done(job)`` is called on the GUI
    thread when the render ended uncancelled (held weakly: a closed canvas may go); then
    either :attr:`error` (a traceback) or :attr:`renderer` holds the result."""

    def __init__(self, figure, size: tuple, prepare, spare, on_done):
        self.figure, self.size, self.prepare = figure, size, prepare
        self.renderer = spare if spare is not None and _size(spare) == size else None
        self.error: str | None = None
        self.cancelled = False
        self._on_done = weakref.WeakMethod(on_done)
        self._lock = threading.Lock()
        self._running = False
        self.ended = threading.Event()

    def cancel(self, wait: bool = True) -> None:
        """Cancel the render; when it is under way, wait (``STOP_WAIT_S`` at most) until it
        stopped touching the figure."""
        with self._lock:
            self.cancelled = True
            running = self._running
        if running and wait:
            self.ended.wait(STOP_WAIT_S)

    def run(self) -> None:
        """The render (on the render thread)."""
        with self._lock:
            if self.cancelled:
                self.ended.set()
                return
            self._running = True
        _here.job = self
        try:
            if self.renderer is None:
                self.renderer = CancellableRenderer(*self.size)
            else:
                self.renderer.clear()
            self.prepare(self.figure)
            _draw(self.figure, self.renderer)
        except Cancelled:
            pass
        except Exception:  # the figure changed under the render despite the rules
            self.error = traceback.format_exc()
        finally:
            _here.job = None
            self.figure = self.prepare = None  # the GUI thread's, not this thread's to free
            self.ended.set()


def _size(renderer) -> tuple:
    return renderer.width, renderer.height, renderer.dpi


def _draw(figure, renderer) -> None:
    """``Figure.draw`` without its ``draw_event`` (matplotlib 3.8-3.11 draw so)."""
    artists = figure._get_draw_artists(renderer)
    engine = figure.get_layout_engine()
    if figure.axes and engine is not None:
        try:
            engine.execute(figure)
        except ValueError:  # as Figure.draw: can occur while resizing
            pass
    figure.patch.draw(renderer)
    _draw_list_compositing_images(renderer, figure, artists, figure.suppressComposite)


class _RenderThread(QObject):
    """The thread that renders, and the queued signal that brings its jobs back. At exit
    the render under way and those waiting are cancelled and the thread ends
    (:mod:`.threads`)."""

    finished = Signal(object)

    def __init__(self):
        super().__init__()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._job: RenderJob | None = None  # the one under way
        self._ending = False
        self.finished.connect(self._deliver)  # emitted on the render thread: queued
        start_thread(self._work, "figure renders", stop=self._end)

    def submit(self, job: RenderJob) -> None:
        self._jobs.put(job)

    def _end(self) -> None:
        self._ending = True
        job = self._job
        if job is not None:
            job.cancel(wait=False)
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._job = job
            if self._ending:  # read after _job is set: _end cancels it or this does
                job.cancel(wait=False)
            job.run()
            if not job.cancelled:
                try:
                    self.finished.emit(job)
                except RuntimeError:  # Qt is gone (the application quit)
                    return
            self._job = job = None

    @staticmethod
    def _deliver(job: RenderJob) -> None:
        on_done = job._on_done()
        if on_done is not None:
            on_done(job)


_thread: _RenderThread | None = None


def submit(job: RenderJob) -> None:
    """Render ``job`` after the renders asked before it (call on the GUI thread)."""
    global _thread
    if _thread is None:
        _thread = _RenderThread()
    _thread.submit(job)
