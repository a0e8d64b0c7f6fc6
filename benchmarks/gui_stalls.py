"""Longest GUI-thread stalls while the docks work (issue 9, item 3); prints one markdown table.

A 20 ms QTimer ticks on the GUI thread while each activity runs; a stall is the gap between
two ticks. Per activity the table gives the longest gap, the 99th percentile, the ratio
of the longest to the idle baseline measured in the same run, and how long the activity
took (the GUI thread's share of the 2 cores slows a run). Each is measured on for half a
second after its end: what the end brings (a notification sliding in over the canvas, the
last paint) counts with it, and the next starts on a settled GUI, as a person's next click
does. Every activity is started the way a person does it, with the dock's button, in a
shown viewer with all docks open:

    opening the six docks (one a second), torch loading after the docks opened,
    whole-frame prediction of N small frames, "Use new model" (the refresh it starts),
    tiled prediction, heads-only training, full training, evaluation, ranking.

Usage (a display is needed; the numbers depend on the machine, compare ratios)::

    xvfb-run -a python benchmarks/gui_stalls.py [--frames 48] [--size 64] [--where 100]
"""

from __future__ import annotations

import argparse
import faulthandler
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

TICK_MS = 20
SETTLE_S = 0.5  # measured on after each activity's end
DOCK_CLICK_MS = 1000  # between two docks opened from the Plugins menu
ACTIVITIES = ("whole", "tiled", "heads", "full", "use", "evaluate", "rank")
PLUGIN = "napari-infection-clock"


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48, help="frames per well")
    parser.add_argument("--size", type=int, default=64, help="frame side (px)")
    parser.add_argument("--tile", type=int, default=16, help="tile side of the tiled run (px)")
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle baseline length (s)")
    parser.add_argument("--where", type=float, default=0.0, metavar="MS",
                        help="also time the GUI thread's paints, draws and slots and print, per "
                        "activity, what the stalls longer than MS were spent in")
    parser.add_argument("--stacks", type=float, default=0.0, metavar="MS",
                        help="dump every thread's stack in stalls longer than MS (read without "
                        "the GIL: some runs end in a segmentation fault)")
    parser.add_argument("--only", nargs="+", choices=ACTIVITIES, default=list(ACTIVITIES),
                        help="activities to run (training runs anyway when later ones need it)")
    return parser.parse_args()


class StallMeter:
    """Ticks of a 20 ms QTimer; the gaps between them are the GUI thread's stalls."""

    def __init__(self, dump_after_s: float = 0.0, dump_file=None):
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.dump_after_s, self.dump_file = dump_after_s, dump_file

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())
        if self.dump_after_s:  # every thread's stack if the next tick is this late
            faulthandler.dump_traceback_later(self.dump_after_s, file=self.dump_file)

    def measure(self, app, start, done, timeout_s: float = 900.0) -> np.ndarray:
        """Start the timer, call ``start()``, spin the event loop until ``done()`` and
        :data:`SETTLE_S` more: what an activity's end brings (a notification sliding in over
        the canvas, the last paint) counts with it, and the next one starts on a settled
        GUI, as a person's next click does. :attr:`took_s`: until ``done()``."""
        from qtpy.QtCore import QEventLoop, QTimer

        self.ticks = [time.perf_counter()]
        self.timer.start()
        start()
        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(50)
        deadline = time.monotonic() + timeout_s
        ended = []

        def check():
            now = time.perf_counter()
            if not ended and done():
                ended.append(now)
            if (ended and now > ended[0] + SETTLE_S) or time.monotonic() > deadline:
                loop.quit()

        poll.timeout.connect(check)
        poll.start()
        loop.exec()
        poll.stop()
        self.timer.stop()
        if self.dump_after_s:
            faulthandler.cancel_dump_traceback_later()
        self.ticks.append(time.perf_counter())
        if not ended:
            raise TimeoutError("the activity did not end in time")
        self.took_s = ended[0] - self.ticks[0]
        return np.diff(self.ticks) * 1000.0


class SlotTimer:
    """Where the long stalls went: the GUI thread's time in the functions that paint, draw,
    make layers or handle a run's updates, timed by wrapping them (no sampling thread: a
    thread that holds another's frames can free that thread's Qt objects, e.g. a painter)."""

    #: (label, module, class or None, function): wrapped before the docks are made.
    SUSPECTS = (
        ("vispy canvas paint", "vispy.app.backends._qt", "CanvasBackendDesktop", "paintGL"),
        ("vispy canvas resized", "vispy.app.backends._qt", "CanvasBackendDesktop", "resizeGL"),
        ("Qt window events (widget repaints, compositing)", "napari._qt.qt_main_window",
         "_QtMainWindow", "event"),
        ("matplotlib draw", "matplotlib.backends.backend_agg", "FigureCanvasAgg", "draw"),
        ("matplotlib: a render shown", "napari_infection_clock.ui.figures",
         "ThemedCanvas", "_show_render"),
        ("matplotlib: a render stopped for a change", "napari_infection_clock.ui.figures",
         "ThemedCanvas", "_stop_render"),
        ("matplotlib canvas resized", "matplotlib.backends.backend_qt", "FigureCanvasQT",
         "resizeEvent"),
        ("matplotlib constrained layout", "matplotlib.layout_engine",
         "ConstrainedLayoutEngine", "execute"),
        ("napari add_image", "napari.components.viewer_model", "ViewerModel", "add_image"),
        ("napari add_labels", "napari.components.viewer_model", "ViewerModel", "add_labels"),
        ("napari add_shapes", "napari.components.viewer_model", "ViewerModel", "add_shapes"),
        ("run hand-over (rest)", "napari_infection_clock.ui.workers", "Run", "_drain"),
        ("prediction: model ready", "napari_infection_clock.ui.prediction_widget",
         "PredictionWidget", "_on_model_ready"),
        ("prediction: batch (rest)", "napari_infection_clock.ui.prediction_widget",
         "PredictionWidget", "_on_batch"),
        ("prediction: publish", "napari_infection_clock.ui.prediction_widget",
         "PredictionWidget", "_publish"),
        ("prediction: end (rest)", "napari_infection_clock.ui.prediction_widget",
         "PredictionWidget", "_on_end"),
        ("prediction: status line", "napari_infection_clock.ui.prediction_widget",
         "PredictionWidget", "_say"),
        ("overlays: make a layer", "napari_infection_clock.ui.overlays", "PredictionLayers",
         "make_next"),
        ("overlays: values", "napari_infection_clock.ui.overlays", "PredictionLayers",
         "add_frames"),
        ("overlays: tiles layer", "napari_infection_clock.ui.overlays", "PredictionLayers",
         "_tiles"),
        ("napari's parts of a new layer (visual, controls)",
         "napari_infection_clock.ui.layer_parts", "LayerParts", "make_next"),
        ("overlays: clocks", "napari_infection_clock.ui.overlays", "PredictionLayers",
         "set_clocks"),
        ("readout", "napari_infection_clock.ui.readout", "Readout", "update"),
        ("plot: redraw artists", "napari_infection_clock.ui.plot_widget", "TimeSeriesPlot",
         "redraw"),
        ("plot: marker", "napari_infection_clock.ui.plot_widget", "TimeSeriesPlot",
         "_move_marker"),
        ("training: batch (rest)", "napari_infection_clock.ui.training_widget",
         "TrainingWidget", "_on_batch"),
        ("training: end (rest)", "napari_infection_clock.ui.training_widget",
         "TrainingWidget", "_on_end"),
        ("evaluation: show (rest)", "napari_infection_clock.ui.evaluation_widget",
         "EvaluationWidget", "show"),
        ("ranking: batch", "napari_infection_clock.ui.label_next_widget",
         "LabelNextWidget", "_on_batch"),
        ("session model changed", "napari_infection_clock.ui.state", "Session", "set_model"),
    )

    def __init__(self, longer_than_ms: float):
        import gc
        import importlib

        self.threshold = longer_than_ms / 1000.0
        self.gui = threading.get_ident()
        self.spans: list[tuple[float, float, str]] = []  # start, end, label; self time only
        self._open: list[list] = []  # [label, start, time in wrapped callees]
        for label, module, owner, name in self.SUSPECTS:
            try:
                target = getattr(importlib.import_module(module), owner)
                setattr(target, name, self._wrap(getattr(target, name), label))
            except (ImportError, AttributeError) as err:
                print(f"    (not timed: {label}: {err})")
        gc.callbacks.append(self._gc)

    def _wrap(self, function, label):
        import functools

        @functools.wraps(function)
        def timed(*args, **kwargs):
            if threading.get_ident() != self.gui:
                return function(*args, **kwargs)
            self._enter(label)
            try:
                return function(*args, **kwargs)
            finally:
                self._leave()

        return timed

    def _enter(self, label: str) -> None:
        self._open.append([label, time.perf_counter(), 0.0])

    def _leave(self) -> None:
        label, start, inner = self._open.pop()
        end = time.perf_counter()
        if self._open:
            self._open[-1][2] += end - start
        self.spans.append((start, end, label, end - start - inner))

    def _gc(self, phase, info) -> None:
        if threading.get_ident() == self.gui:
            if phase == "start":
                self._enter(f"garbage collection (gen {info['generation']})")
            elif self._open and self._open[-1][0].startswith("garbage"):
                self._leave()

    def report(self, ticks: list[float]) -> None:
        """Print per cause its self time in the stalls longer than the threshold (all of
        them, and each of the three longest); the rest is Qt and napari outside these."""
        gaps = [(a, b) for a, b in zip(ticks, ticks[1:]) if b - a > self.threshold]
        spans, self.spans = self.spans, []
        calls = Counter(label for start, _, label, _ in spans if start >= ticks[0])
        print("    calls: " + ", ".join(f"{label} {calls[label]}" for label in (
            "vispy canvas paint", "vispy canvas resized",
            "napari's parts of a new layer (visual, controls)", "matplotlib draw",
            "matplotlib constrained layout",
            "Qt window events (widget repaints, compositing)")))
        if not gaps:
            return

        def causes(a, b) -> Counter:
            spent = Counter()
            for start, end, label, own in spans:
                if end > a and start < b:  # its self time, cut to the stall
                    spent[label] += own * min(1.0, (min(end, b) - max(start, a)) / (end - start))
            spent["other (Qt, napari, the GIL)"] = max(0.0, (b - a) - sum(spent.values()))
            return spent

        def show(spent: Counter, indent: str) -> None:
            for label, seconds in spent.most_common(10):
                if seconds >= 0.001:
                    print(f"{indent}{seconds * 1000:6.0f} ms  {label}")

        total = Counter()
        for a, b in gaps:
            total.update(causes(a, b))
        print(f"    {len(gaps)} stalls > {self.threshold * 1000:.0f} ms, "
              f"{sum((b - a) for a, b in gaps) * 1000:.0f} ms in all; time per cause:")
        show(total, "      ")
        for a, b in sorted(gaps, key=lambda g: g[0] - g[1])[:3]:
            print(f"    the {(b - a) * 1000:.0f} ms stall, {a - ticks[0]:.2f} s in:")
            show(causes(a, b), "        ")


def main() -> None:
    args = _parse()
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    timer = SlotTimer(args.where) if args.where else None  # wraps the docks' methods first
    from napari_infection_clock.ui import torch_ahead

    work = Path(tempfile.mkdtemp(prefix="gui_stalls_"))
    dumps = None
    if args.stacks:  # every thread's stack in long stalls, taken without the GIL
        dumps = open(work / "stall_stacks.txt", "w")  # noqa: SIM115  open for the whole run
        print(f"  stacks of every thread in stalls > {args.stacks:.0f} ms: {dumps.name}")
    meter = StallMeter(args.stacks / 1000.0, dumps)
    rows = []

    def record(name, gaps):
        rows.append((name, gaps, meter.took_s))
        print(f"  {name}: max {gaps.max():.0f} ms, p99 {np.percentile(gaps, 99):.0f} ms",
              flush=True)
        if timer is not None:
            timer.report(meter.ticks)

    docks = {}
    names = ["Predict infection", "Infection time-series plot", "Annotate frames and crops",
             "Retrain on labels", "Evaluate the model", "What to label next"]

    def open_next():
        """One dock per Plugins-menu click, a click every DOCK_CLICK_MS."""
        from qtpy.QtCore import QTimer

        name = names[len(docks)]
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        if len(docks) < len(names):
            QTimer.singleShot(DOCK_CLICK_MS, open_next)

    # the docks open without torch (the first one's own imports are a stall of their own);
    # a thread of the plugin's loads it meanwhile
    record("opening the six docks, one a second", meter.measure(
        app, open_next, lambda: len(docks) == len(names)))
    record("torch loading after the docks opened (ui.torch_ahead)",
           meter.measure(app, lambda: None, torch_ahead.loaded))

    # the data and a tiny model (the core is imported only now, after the viewer: the order
    # a user's session has)
    from napari_infection_clock.core.annotations import open_annotations
    from napari_infection_clock.core.checkpoint import CheckpointMeta, save_checkpoint
    from napari_infection_clock.core.model import ModelConfig, build_model
    from napari_infection_clock.core.preprocess import Preprocessing
    from napari_infection_clock.core.synthetic import write_research_dataset
    from napari_infection_clock.core.targets import TimePolicy
    from napari_infection_clock.ui.state import session_for

    paths = write_research_dataset(work / "wells", n_infected=2, n_mock=2, n_frames=args.frames,
                                   size=args.size, seed=3)
    config = ModelConfig("resnet18", hidden_dim=16)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(32), time=TimePolicy())
    checkpoint = save_checkpoint(work / "tiny.pt", build_model(config, init="random"), meta)
    session = session_for(viewer)
    for path in paths:
        store, sidecar = open_annotations(path, args.frames)
        infected = path.parent.name == "infected"
        store.set_condition("infected" if infected else "mock", onset_h=1.0)
        store.label_frames(range(args.frames), "infected" if infected else "uninfected")
        store.save(sidecar)
        session.annotations[store.stack] = store
    well = viewer.open(paths[0], plugin=PLUGIN)[0]

    predict = docks["Predict infection"]
    train = docks["Retrain on labels"]
    evaluate = docks["Evaluate the model"]
    rank = docks["What to label next"]
    predict.image.value = well
    predict.checkpoint.value = checkpoint
    predict.device.value = "cpu"
    train.start_combo.setCurrentText("random")
    train.arch_combo.setCurrentText("resnet18")
    train.size_spin.setValue(32)
    train.epochs_spin.setValue(2)
    train.batch_spin.setValue(16)
    train.device_combo.setCurrentText("cpu")
    train.output_edit.setText(str(work / "trained.pt"))
    rank.image_combo.setCurrentText(well.name)

    def in_front(dock):
        """Bring ``dock``'s tab forward, as a person does to reach its button (the forms
        share one tab group): its own redraws then count."""
        from napari_infection_clock.ui.docking import dock_of

        dock_of(getattr(dock, "native", dock)).raise_()
        app.processEvents()

    def idle():
        end = time.monotonic() + args.idle_s
        return meter.measure(app, lambda: None, lambda: time.monotonic() > end)

    def prediction(mode, click, dock):
        in_front(dock)
        if predict.mode.value != mode:
            def pick():
                predict.mode.value = mode
                if mode == "tile grid":
                    predict.tile_size.value = args.tile

            picked(f"prediction mode set to {mode}", pick)
        ended = []
        predict.finished.connect(ended.append)
        gaps = meter.measure(app, click, lambda: bool(ended))
        predict.finished.disconnect(ended.append)
        assert ended[0].startswith("done"), ended
        return gaps

    def picked(what, pick):
        """The user picks an option, the dock shows its fields, then the user clicks: the
        picking's stalls are a row of their own."""
        end = time.monotonic() + 1.0
        record(f"{what} (the dock shows its fields)",
               meter.measure(app, pick, lambda: time.monotonic() > end))

    def training(mode):
        in_front(train)
        if train.mode_combo.currentText() != mode:
            picked(f"training mode set to {mode}", lambda: train.mode_combo.setCurrentText(mode))
        def click():
            started = time.perf_counter()
            train.start_button.click()  # the dock's start runs in the click
            if timer is not None:
                print(f"    the Start click's own handling: "
                      f"{(time.perf_counter() - started) * 1000:.0f} ms")

        gaps = meter.measure(app, click, lambda: train.worker is None)
        assert train.use_button.isEnabled(), train.status.text()
        return gaps

    # the docks' first paints and what they do ahead while the viewer idles (ui.glyphs)
    settling = idle(), meter.took_s
    rows.insert(0, ("idle (baseline)", idle(), meter.took_s))
    only = set(args.only)
    if "whole" in only:
        record(f"whole-frame prediction, {args.frames} frames",
               prediction("whole frame", predict.run_button.native.click, predict))
    if "tiled" in only:
        record(f"tiled prediction, {args.frames} frames x {(args.size // args.tile) ** 2} tiles",
               prediction("tile grid", predict.run_button.native.click, predict))
    if "heads" in only or only & {"use", "evaluate", "rank"}:
        record("heads-only training, 2 epochs", training("heads"))
    if "full" in only:
        record("full training, 2 epochs", training("full"))
    if "use" in only:
        record('"Use new model" and the refresh it starts',
               prediction("whole frame", train.use_button.click, train))
    if "evaluate" in only:
        in_front(evaluate)
        evaluate.source_combo.setCurrentIndex(0)
        record("evaluation", meter.measure(app, evaluate.run_button.click,
                                           lambda: evaluate.worker is None))
    if "rank" in only:
        if session.model is None:
            train.use_button.click()
        in_front(rank)
        record("ranking (what to label next)", meter.measure(app, rank.rank_button.click,
                                                             lambda: rank.worker is None))
    rows.insert(3, (f"the first {args.idle_s:g} s after a well was opened", *settling))
    idle_max = rows[0][1].max()
    print(f"\nGUI-thread stalls ({TICK_MS} ms timer; {args.frames} frames of {args.size} px, "
          "resnet18 at 32 px, cpu)\n")
    print("| activity | longest stall | p99 stall | longest / idle longest | time |")
    print("| --- | --- | --- | --- | --- |")
    for name, gaps, took in rows:
        print(f"| {name} | {gaps.max():.0f} ms | {np.percentile(gaps, 99):.0f} ms | "
              f"{gaps.max() / idle_max:.1f} | {took:.1f} s |")
    viewer.close()


if __name__ == "__main__":
    main()
