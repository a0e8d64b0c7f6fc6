"""Dock widget: predict infection and infection duration for an image layer's time-lapse.

The core's :meth:`..core.predictor.Predictor.iter_stack` runs in a :class:`.workers.Run`
and yields one finished frame at a time; a few times per second the GUI thread paints the
frames finished since into the output layers (:mod:`.overlays`) in one go, so napari stays
responsive however fast frames come. Cancel is cooperative: the predictor polls the run's
stop between batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_warning
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..core.calibration import clock_interval
from ..core.channels import channel_mismatch
from ..core.choices import default_batch_size
from ..core.clock import region_clocks
from ..core.information import describe_missing
from ..core.novelty import NOVELTY_COLUMNS, add_novelty
from ..core.recipes import native_tiles_of
from ..core.stack import StackError, stack_from_array
from ..core.targets import DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H, TimePolicy
from ..core.tiles import TileSpec, resized_tiles_note, tile_grid_shape
from .devices import device_choices
from .docking import place_form
from .gl_context import repaint_pending
from .glyphs import GlyphsAhead
from .layer_roles import (
    FROM_FILE,
    FROM_LABELS,
    OUTPUT_KIND,
    START_OFFSET_H,
    annotation_key,
    image_id,
    image_in_view,
    is_output,
    output_layer,
    time_setting,
)
from .messages import answered_in_view, fit_messages, short, show, tell
from .overlays import (
    CLASS_COLORS,
    CLASS_NAME,
    CONTINUOUS,
    IMPORTED_ON_FIRST_LAYER,
    SUFFIXES,
    Grid,
    PredictionLayers,
    compute_dash_patterns,
    frame_in_view,
    rectangles_to_boxes,
    region_grid,
    tile_grid,
)
from .readout import Readout, text_overlay
from .scrolling import fit_width
from .state import PredictionRun, SessionModel, session_for
from .teardown import on_dock_closed
from .torch_ahead import when_loaded
from .workers import Batch, Failed, Result, Run, Stop, import_ahead

SOURCE_FILE = "checkpoint file"
SOURCE_SESSION = "model of this session"
MODE_WHOLE = "whole frame"
MODE_TILES = "tile grid"
MODE_REGIONS = "regions (Shapes rectangles)"
#: Seconds between updates of the shared results (the plot redraws on each).
RESULTS_EVERY_S = 0.5
#: Milliseconds from a tick that painted frames to the update of the shared results: the
#: plot's redraw then takes an event-loop turn of its own, not the one that repaints the
#: canvas (on a slow machine each holds the GUI thread for a while; together, twice that).
PUBLISH_AFTER_MS = 100
#: Milliseconds between the steps of a run's end. Not 0: a chain of zero timers ran all the
#: steps in one stall (Qt handled none of the other timers, input or repaints between them).
#: A step also waits until the canvas has shown the last one's repaint
#: (``gl_context.repaint_pending``): else each held the canvas again before it, and a short
#: run's new visuals were all first drawn in one paint.
END_STEP_MS = 30


class InputError(ValueError):
    """Something the user has to change before a prediction can run."""


@dataclass
class Job:
    """Everything one run needs, checked on the GUI thread before the worker starts."""

    image: Image
    stack: object
    grid: Grid
    tiles: TileSpec
    boxes: np.ndarray | None
    #: The mode chooser's value when the run started (what the run is recorded as).
    mode: str
    #: The id of the Shapes layer whose rectangles are predicted (regions mode), else None.
    regions_id: str | None
    frames: list[int]
    first_frame: int
    checkpoint: Path | None
    #: The session's model to run, None: the checkpoint's (loaded by the run); once the
    #: model is ready, the run's model (what its results are published as).
    session_model: SessionModel | None
    device: str
    batch_size: int
    compile: bool
    #: None: the model's (else the default), known once the model is loaded.
    frame_interval_h: float | None
    onset_h: float | None
    start_offset_h: float

    def times_for(self, meta) -> tuple[float, float]:
        """The run's frame interval and onset with the model's ``meta`` (a CheckpointMeta)."""
        model = time_setting(None, meta)
        return (model.frame_interval_h if self.frame_interval_h is None else self.frame_interval_h,
                model.onset_h if self.onset_h is None else self.onset_h)


@dataclass
class Clocks:
    """The worker's last answer: every region's clock (core.clock), fitted off the GUI thread."""

    regions: pd.DataFrame
    clamp: tuple[float, float]
    calibration: dict
    novelty: pd.DataFrame | None


def _class_legend() -> str:
    """The class layer's colours, as rich text for a label (items without information
    are left empty)."""
    return " ".join(
        f"<span style='color:{CLASS_COLORS[value]}'>&#9632;</span> {name}"
        if CLASS_COLORS[value] != "transparent" else f"&#9633; {name}"
        for value, name in CLASS_NAME.items()
    )


class PredictionWidget(Container):
    """Inputs, Run/Cancel and progress for one prediction at a time."""

    #: Emitted on the GUI thread when a run ends, with its status message.
    finished = Signal(str)

    def __init__(self, napari_viewer):
        super().__init__(labels=True, scrollable=True)  # fits beside the other docks
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.layers: PredictionLayers | None = None
        self.readout: Readout | None = None
        self._job: Job | None = None
        self._last_results = 0.0
        self._done = 0
        self._failed = False
        self._message = ""
        self._note = ""  # the run's tiles resized for a native-tile model (see _refuse_model_tiles)
        self._ending = None  # the steps left of a run's end (see _on_end)
        self._publish_later = QTimer(self.native)
        self._publish_later.setSingleShot(True)
        self._publish_later.setInterval(PUBLISH_AFTER_MS)
        self._publish_later.timeout.connect(self._publish)
        self._shown_image = None  # the image the settings below are for
        self._typed: dict = {}  # image -> the settings the user left on it

        # the user's images and rectangles only, never the plugin's own output layers
        self.image = ComboBox(label="image", choices=self._input_images)
        self.source = ComboBox(label="model", choices=[SOURCE_FILE, SOURCE_SESSION])
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt *.pth *.ckpt")
        self.model_info = Label(label="", value="no model loaded")
        self.mode = ComboBox(label="mode", choices=[MODE_WHOLE, MODE_TILES, MODE_REGIONS])
        self.tile_size = SpinBox(label="tile size (px)", value=128, min=8, max=16384)
        self.stride = SpinBox(
            label="stride (px)", value=0, min=0, max=16384, tooltip="0: same as the tile size"
        )
        self.regions = ComboBox(label="regions", choices=self._region_layers)
        self.frame_interval_h = FloatSpinBox(
            label="frame interval (h)",
            value=DEFAULT_FRAME_INTERVAL_H,
            min=0.001,
            max=1000,
            step=0.05,
        )
        self.onset_h = FloatSpinBox(
            label="onset (h)", value=DEFAULT_ONSET_H, min=0, max=10000, step=0.5
        )
        self.time_source = Label(label="", value="")
        self.device = ComboBox(label="device", choices=device_choices)
        self.batch_size = SpinBox(label="batch size", value=default_batch_size("cpu"), min=1,
                                  max=4096)
        self.compile = CheckBox(
            text="torch.compile",
            value=False,
            tooltip="Compile the model first: the first frames wait seconds to a minute, long "
            "runs then go 15-30 % faster (docs/benchmarks.md). Needs a C++ compiler; "
            "without one a warning says so and prediction runs as usual.",
        )
        self.first = SpinBox(label="first frame", value=0, min=0, max=0)
        self.last = SpinBox(label="last frame", value=0, min=0, max=0)
        self.run_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="", value="")
        self.swap_button = PushButton(
            text="show duration (h)",
            enabled=False,
            tooltip="probability, duration and onset overlays are shown one at a time",
        )
        self.legend = Label(label="class layer", value=_class_legend())
        self.extend(
            [
                self.image,
                self.source,
                self.checkpoint,
                self.model_info,
                self.mode,
                self.tile_size,
                self.stride,
                self.regions,
                self.frame_interval_h,
                self.onset_h,
                self.time_source,
                self.device,
                self.batch_size,
                self.compile,
                self.first,
                self.last,
                self.run_button,
                self.cancel_button,
                self.progress_bar,
                self.status,
                self.swap_button,
                self.legend,
            ]
        )
        for label in (self.status, self.time_source):
            fit_messages(label.native)
        place_form(self.native, "Predict")
        fit_width(self.native)  # never narrower than the form

        when_loaded(self.native, self._devices_known)
        import_ahead(*IMPORTED_ON_FIRST_LAYER, compute_dash_patterns)
        self._glyphs = GlyphsAhead(self.viewer, self.native)  # the readout's and colorbars'
        self.image.changed.connect(self._on_image_changed)
        self.frame_interval_h.changed.connect(self._show_time_source)
        self.onset_h.changed.connect(self._show_time_source)
        self.mode.changed.connect(self._on_mode_changed)
        self.source.changed.connect(self._on_source_changed)
        for chooser in (self.image, self.source, self.checkpoint):
            chooser.changed.connect(self._forget_last_run)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.swap_button.clicked.connect(self.swap_overlay)
        # after a click, the bar and status line (below the fold beside the other docks)
        answered_in_view(self.status.native, self.run_button.native, self.cancel_button.native)
        self.session.model_changed.connect(self._on_session_model)
        self.session.prediction_requested.connect(self.refresh)
        self.session.image_changed.connect(self._follow_view)
        self.session.labels_changed.connect(self._on_labels_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        on_dock_closed(self.native, self.close_down)
        self.reset_choices()
        self._on_mode_changed()
        self._on_source_changed()
        self._follow_view(self.session.image)
        self._on_image_changed()

    @property
    def native(self):
        """The scroll area around the form: napari docks ``native``, and a dock that scrolls
        asks for little height, so that it fits one screen with the other docks."""
        return self.root_native_widget

    # -- reacting to inputs ----------------------------------------------------------------
    def _devices_known(self) -> None:
        """torch is loaded: the picker offers this machine's devices, and the batch size
        suits the best of them, unless the user changed it."""
        chosen = self.device.value
        self.device.choices = ()  # emptied first: magicgui adds new choices at the end
        self.device.reset_choices()
        if chosen in self.device.choices:
            self.device.value = chosen
        if self.batch_size.value == default_batch_size("cpu"):  # the best device's, after auto
            self.batch_size.value = default_batch_size(self.device.choices[1])

    def _on_image_changed(self, *_):
        """Show the settings for the chosen image: the ones the user left on it (the view
        moved off it and back), else its frames and its time setting."""
        self._keep_typed()
        layer = self.image.value
        if layer is None or layer.ndim < 3:
            self._no_frame_range(layer)
            self._fill_time()
            return
        self._shown_image = layer
        n = int(layer.data.shape[0]) if not layer.multiscale else int(layer.data[0].shape[0])
        for box in (self.first, self.last):
            box.enabled, box.tooltip = True, None
        self.first.max = self.last.max = n - 1
        self.first.value, self.last.value = 0, n - 1
        self._fill_time()
        typed = self._typed.pop(layer, None)
        if typed is not None:
            first, last, interval, onset = typed
            self.first.value, self.last.value = first, last
            if interval is not None:
                self.frame_interval_h.value, self.onset_h.value = interval, onset

    def _no_frame_range(self, layer) -> None:
        """No image, or a 2D one: no frames to choose (the last image's range stayed
        there), so the range is off and says why; nothing is kept for such an image."""
        self._shown_image = None
        reason = ("no image chosen" if layer is None
                  else f"'{layer.name}' is a 2D image: it has no frames to choose")
        for box in (self.first, self.last):
            box.value = box.max = 0
            box.enabled, box.tooltip = False, reason

    def _forget_last_run(self, *_) -> None:
        """Another image or model was chosen: the status line and bar spoke of the last
        run or refusal (another image's shape, another file that is not a checkpoint, a
        run done on another image), so they are cleared; a run in flight keeps them."""
        if self.running or not self._message:
            return
        self._message = ""
        self.progress_bar.value = 0
        show(self.status.native, "")

    def _keep_typed(self) -> None:
        """Remember the frame range and any frame interval and onset set here for the image
        shown until now, so that clicking another layer and back does not reset them."""
        image, time = self._shown_image, getattr(self, "_time", None)
        if image is None or time is None or image not in self.image.choices:
            return
        edited = self.time_source.value == "set here"
        self._typed[image] = (
            self.first.value, self.last.value,
            self.frame_interval_h.value if edited else None,
            self.onset_h.value if edited else None,
        )

    def _follow_view(self, image) -> None:
        """The image the user now looks at (the session's image in view) becomes the
        chooser's; with none in view (several shown, none selected) the choice stays."""
        if image is not None and image in self.image.choices:
            self.image.value = image
        self._name_swap(self._overlays_in_view())

    def _input_images(self, _widget=None) -> list:
        # 2D images stay listed: choosing one says why it cannot be predicted
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not is_output(ly)]

    def _region_layers(self, _widget=None) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, Shapes) and not is_output(ly)]

    def _fill_time(self, keep_edited: bool = False) -> None:
        """Frame interval and onset from the layer, else the model, else defaults; the
        line below them says which, and warns about a default. ``keep_edited`` (a new
        model): a value the user set stays."""
        model, shown = self.session.model, getattr(self, "_time", None)
        image = self.image.value
        if image is None or image.ndim < 3:  # no time axis: no source to name
            self._time = None
            self.time_source.value = ("no image chosen" if image is None
                                      else f"no time axis: '{image.name}' is a 2D image")
            return
        self._time = time_setting(image, model.meta if model else None,
                                  self.session.labels_of(image))
        for box, value, before in (
            (self.frame_interval_h, self._time.frame_interval_h,
             shown.frame_interval_h if shown else None),
            (self.onset_h, self._time.onset_h, shown.onset_h if shown else None),
        ):
            if not (keep_edited and shown is not None and box.value != before):
                box.value = value
        self._show_time_source()

    def _show_time_source(self, *_) -> None:
        time = getattr(self, "_time", None)
        if time is None:
            return
        edited = (self.frame_interval_h.value, self.onset_h.value) != (
            time.frame_interval_h, time.onset_h)
        self.time_source.value = "set here" if edited else time.describe()

    def _on_mode_changed(self, *_):
        self.tile_size.visible = self.stride.visible = self.mode.value == MODE_TILES
        self.regions.visible = self.mode.value == MODE_REGIONS

    def _on_source_changed(self, *_):
        self.checkpoint.visible = self.source.value == SOURCE_FILE
        model = self.session.model
        if self.source.value == SOURCE_SESSION:
            self.model_info.value = model.description if model else "no model in this session yet"

    def _on_session_model(self, model: SessionModel | None):
        if model is not None and model.origin != "checkpoint":
            self.source.value = SOURCE_SESSION
        self._on_source_changed()
        if model is not None:
            self._prefill_from_model(model)

    def _on_labels_changed(self, key: str) -> None:
        """The chosen image's frame interval or onset may have been set in the annotation
        dock: show them (a value typed here stays)."""
        image = self.image.value
        if image is not None and image.ndim >= 3 and annotation_key(image) == key:
            self._fill_time(keep_edited=True)

    def _prefill_from_model(self, model: SessionModel):
        """Fill frame interval and onset from the model unless the layer carries them or
        the user set them."""
        self._fill_time(keep_edited=True)
        self.model_info.value = model.description

    def close_down(self) -> None:
        """Leave the session and stop a running prediction (the dock was closed)."""
        self.session.model_changed.disconnect(self._on_session_model)
        self.session.prediction_requested.disconnect(self.refresh)
        self.session.image_changed.disconnect(self._follow_view)
        self.session.labels_changed.disconnect(self._on_labels_changed)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if self.readout is not None:
            self.readout.close()
        self._ending = None
        self.cancel()

    def _on_layer_removed(self, event) -> None:
        """The image of the run (or of the readout) was removed: stop the run and make no
        more layers for it (the session removes the ones there are)."""
        self._typed.pop(event.value, None)
        if event.value is self._shown_image:
            self._shown_image = None
        if self.readout is not None and event.value is self.readout.layers.image:
            self.readout.close()
            self.readout = None
            text_overlay(self.viewer).text = ""
        if self._orphaned():
            self.cancel()

    def _orphaned(self) -> bool:
        return self._job is not None and self._job.image not in self.viewer.layers

    # -- running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def refresh(self) -> None:
        """Predict again with the session's model (what the training widget calls)."""
        self.source.value = SOURCE_SESSION
        self.run()

    def run(self) -> bool:
        """Check the inputs and start a run; False (with a message) when they do not fit."""
        if self.running:
            self._say("a prediction is already running; cancel it first", error=True)
            return False
        try:
            job = self._job_from_inputs()
        except InputError as err:
            self._say(str(err), error=True)
            return False
        self._start(job)
        return True

    def cancel(self) -> None:
        if self.running:
            self.worker.stop()
            self._say("cancelling...")

    def _job_from_inputs(self) -> Job:
        image = self.image.value
        if image is None:
            raise InputError("no image layer: open a time-lapse (File > Open) or a sample first")
        data = image.data[0] if image.multiscale else image.data
        shape = tuple(data.shape)
        if image.rgb and len(shape) == 4:
            axes = "TYXS"
        elif not image.rgb and len(shape) == 3:
            axes = "TYX"
        elif len(shape) - image.rgb < 3:
            raise InputError(
                f"'{image.name}' is a single 2D image {shape}; prediction needs a time-lapse "
                "(T, Y, X) - open the stack with its time axis"
            )
        else:
            raise InputError(
                f"'{image.name}' has shape {shape}; expected a grayscale (T, Y, X) or RGB "
                "(T, Y, X, 3) time-lapse. Open the file again (File > Open) with the "
                "'Infection Clock' reader: a time-lapse per channel (napari's Split Stack "
                "would split the time points)"
            )
        channel = image.metadata.get("channel")  # a channel layer of a multichannel file
        stack = stack_from_array(
            data, axes=axes, name=image.name, frame_interval_h=self.frame_interval_h.value,
            source_channel=None if channel is None else (
                channel, image.metadata.get("channel_desc", f"channel {channel}")),
        )
        height, width = stack.frame_shape
        boxes, regions_id = None, None
        tiles = TileSpec()
        try:
            if self.mode.value == MODE_TILES:
                tiles = TileSpec(self.tile_size.value, self.stride.value or None)
                grid = tile_grid(height, width, tiles)
            elif self.mode.value == MODE_REGIONS:
                if self.regions.value is None:
                    raise InputError("no Shapes layer: draw rectangles in a Shapes layer first")
                boxes = rectangles_to_boxes(self.regions.value, height, width)
                grid = region_grid(height, width, boxes)
                regions_id = image_id(self.regions.value)  # the user may rename the layer
            else:
                grid = tile_grid(height, width, tiles)
        except ValueError as err:
            raise InputError(str(err)) from err
        first, last = self.first.value, self.last.value
        if first > last or last >= stack.n_frames:
            raise InputError(f"frame range {first}..{last} is not within 0..{stack.n_frames - 1}")
        checkpoint, session_model = None, None
        if self.source.value == SOURCE_SESSION:
            session_model = self.session.model
            if session_model is None:
                raise InputError(
                    "no model in this session yet: train one, or choose a checkpoint file"
                )
        else:
            checkpoint = Path(self.checkpoint.value) if self.checkpoint.value else None
            if checkpoint is None or not checkpoint.is_file():
                raise InputError(f"choose a checkpoint file (.pt); '{checkpoint}' is not a file")
            current = self.session.model
            if (
                current is not None
                and current.path == checkpoint
                and current.origin == "checkpoint"
            ):
                session_model = current  # already loaded
        return Job(
            image=image,
            stack=stack,
            grid=grid,
            tiles=tiles,
            boxes=boxes,
            mode=self.mode.value,
            regions_id=regions_id,
            frames=list(range(first, last + 1)),
            first_frame=frame_in_view(self.viewer, image),
            checkpoint=checkpoint,
            session_model=session_model,
            device=self.device.value,
            batch_size=self.batch_size.value,
            compile=self.compile.value,
            frame_interval_h=self._dock_value(self.frame_interval_h.value, "frame_interval_h",
                                              "interval_source"),
            onset_h=self._dock_value(self.onset_h.value, "onset_h", "onset_source"),
            start_offset_h=float(image.metadata.get(START_OFFSET_H, 0.0)),
        )

    def _dock_value(self, value: float, key: str, source: str) -> float | None:
        """``value`` when the user set it or the image's file gave it; None when the dock
        shows a default or a model's value: the run then takes its own model's (a
        checkpoint file is read only in the worker)."""
        shown = getattr(self, "_time", None)
        if (shown is None or getattr(shown, source) in (FROM_FILE, FROM_LABELS)
                or value != getattr(shown, key)):
            return value
        return None

    def _start(self, job: Job) -> None:
        self._job = job
        self.layers = None  # made when the model is ready
        self._waiting = []  # finished frames not shown yet
        self._clocks = None  # the regions' clocks, shown once every frame is
        self._done = 0
        self._failed = False
        self._note = ""
        self._last_results = 0.0
        self._publish_later.stop()
        self.progress_bar.max = len(job.frames)
        self.progress_bar.value = 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._say("loading the model..." if job.session_model is None else "predicting...")
        self.worker = Run(_predict, job, on_batch=self._on_batch, on_end=self._on_end,
                          parent=self.native).start()

    # -- results arriving (GUI thread, a few times per second) --------------------------------
    def _on_batch(self, batch: Batch) -> None:
        if self._orphaned():
            return
        model_ready = False
        for item in batch.results:
            if isinstance(item, SessionModel):
                self._on_model_ready(item)
                model_ready = True
            elif isinstance(item, Clocks):
                self._clocks = item
            elif self.layers is not None:  # none: the run was refused (_refuse_model_tiles)
                self._waiting.append(item)
        if self.layers is not None and not self.layers.ready:
            if not model_ready:  # the readout's first paint is this tick's
                self.layers.make_next()  # one new layer per tick; frames wait for all four
        elif self._waiting:
            self._show_waiting()
            if time.monotonic() - self._last_results > RESULTS_EVERY_S:
                self._publish_later.start()
        if batch.failed is not None:
            self._failed = True
            self._say(f"prediction failed: {batch.failed.message}", error=True,
                      details=batch.failed.details)

    def _show_waiting(self) -> None:
        """Paint the frames finished since the last tick. The progress bar goes first: a
        canvas whose layers changed would otherwise be painted with it and again after."""
        frames, self._waiting = self._waiting, []
        self._done = frames[-1].done
        self.progress_bar.value = self._done
        if not (self.worker is not None and self.worker.stopping):  # "cancelling..." stays
            self._say(self._noted(f"predicting: {self._done} of {len(self._job.frames)} "
                                  "frames done"))
        self.layers.add_frames([f.table for f in frames])

    def _on_model_ready(self, model: SessionModel) -> None:
        """The model is loaded: only now are the output layers made (or reset), so a file
        that is no checkpoint leaves the viewer as it was."""
        job = self._job
        if model is not self.session.model:
            self.session.set_model(model)
        self.model_info.value = model.description
        if self._refuse_model_tiles(model, job):
            return
        interval, onset = job.times_for(model.meta)
        self._job = job = replace(job, session_model=model, frame_interval_h=interval,
                                  onset_h=onset)
        self.layers = PredictionLayers(
            self.viewer, job.image, job.grid, job.stack.n_frames, float(model.meta.time.clamp[1])
        )  # its layers come one per tick from the next one on (see _on_batch)
        if self.readout is not None:
            self.readout.close()
        self.readout = Readout(self.viewer, self.layers, job.frame_interval_h, job.start_offset_h)
        self.swap_button.enabled = True
        self._say(self._noted("predicting..."))
        mismatch = channel_mismatch(model.meta.stacks, self._job.stack.channel_desc)
        if mismatch:
            show_warning(f"{self._job.image.name}: {mismatch}")

    def _refuse_model_tiles(self, model: SessionModel, job: Job) -> bool:
        """A model trained on native tiles would see whole frames shrunk to its tile size
        and answer with confidence: stop before any layer is made, switch the dock to its
        tiles and say so. Frames smaller than its tiles it cannot predict at all (said);
        other tiles are resized to its own (said, as the CLI does)."""
        tiles = native_tiles_of(model.meta.recipe)
        self._note = ""
        if not tiles or job.boxes is not None:
            return False
        try:
            tile_grid_shape(*job.stack.frame_shape,
                            TileSpec(job.tiles.tile_size or tiles, model_tiles=tiles))
        except ValueError as err:
            self._failed = True
            self.worker.stop()
            self._say(str(err), error=True)
            return True
        if job.tiles.tile_size is None:
            self.mode.value, self.tile_size.value, self.stride.value = MODE_TILES, int(tiles), 0
            self._failed = True
            self.worker.stop()
            self._say(f"the model was trained on {tiles} px tiles, not whole frames: the mode "
                      f"is now a {tiles} px tile grid; click Predict again")
            return True
        self._note = resized_tiles_note(tiles, job.tiles.tile_size)
        if self._note:
            show_warning(self._note)
        return False

    def _noted(self, message: str) -> str:
        """``message`` with the run's resized-tiles warning, if any (the status line keeps it)."""
        return f"{message}; {self._note}" if self._note else message

    def swap_overlay(self) -> None:
        """Show the next continuous overlay (probability, duration, onset map) of the image
        in view: one at a time, so that their colours never mix."""
        overlays = self._overlays_in_view()
        if not overlays:
            return
        _next_overlay(overlays).visible = True
        self._name_swap(overlays)

    def _overlays_in_view(self) -> list:
        """The continuous overlays of the image in view (what the user looks at), else of
        the last run (several images shown, none selected)."""
        image, _ = image_in_view(self.viewer)
        if image is not None:
            overlays = [output_layer(self.viewer, image, kind) for kind in CONTINUOUS]
        elif self.layers is not None:
            overlays = [getattr(self.layers, kind) for kind in CONTINUOUS]
        else:
            overlays = []
        return [layer for layer in overlays if layer is not None]

    def _name_swap(self, overlays: list) -> None:
        """The swap button names the overlay its next click shows (off for an image without
        overlays)."""
        self.swap_button.enabled = bool(overlays) or self.worker is not None
        if overlays:
            following = _next_overlay(overlays).metadata[OUTPUT_KIND]
            self.swap_button.text = f"show {SUFFIXES[following].removeprefix('infection ')}"

    def _publish(self) -> None:
        job, layers = self._job, self.layers
        self._publish_later.stop()
        if job is None or layers is None or self._orphaned():
            return
        self._last_results = time.monotonic()
        calibration = job.session_model.meta.calibration  # the run's model, not the session's now
        run = PredictionRun(
            n_frames=job.stack.n_frames,
            frame_interval_h=job.frame_interval_h,
            onset_h=job.onset_h,
            start_offset_h=job.start_offset_h,
            mode=job.mode,
            regions_id=job.regions_id,
            interval_level=calibration.get("level"),
            clock_interval=clock_interval(calibration),
        )
        self.session.set_results(job.image, layers.table, run)

    def _on_end(self, stopped: bool) -> None:
        """Everything the run yielded is in: show the rest a step per turn (a new layer,
        the clocks, the plot's update: each can hold the GUI thread for a while on a slow
        machine, and the viewer repaints and takes input between them), then say how it
        ended. The run counts as running until then."""
        self._ending = self._end_steps(stopped)
        QTimer.singleShot(END_STEP_MS, self._next_end_step)  # not in the last batch's turn

    def _next_end_step(self) -> None:
        if self._ending is None:
            return
        if repaint_pending(self.viewer):  # the last step's repaint first
            QTimer.singleShot(END_STEP_MS, self._next_end_step)
            return
        if self._orphaned():  # its image was removed: nothing to show
            self.layers, self._waiting, self._clocks = None, [], None
        if next(self._ending, None) is None:
            self._ending = None
        else:
            QTimer.singleShot(END_STEP_MS, self._next_end_step)

    def _end_steps(self, stopped: bool):
        """The end of a run, as a generator that yields (True) between steps."""
        while self.layers is not None and not self.layers.ready:
            self.layers.make_next()  # a run shorter than the layers take to make
            yield True
        if self._waiting:
            self._show_waiting()
            yield True
        if self._clocks is not None and self.layers is not None:
            clocks, self._clocks = self._clocks, None
            self.layers.set_clocks(clocks.regions, clocks.clamp, clocks.calibration,
                                   clocks.novelty)
            yield True
            while self.layers is not None and not self.layers.ready:
                self.layers.make_next()  # the onset map, then its colorbar
                yield True
            if self.readout is not None:
                self.readout.update()  # the fitted onset under the cursor
        if self.layers is not None and not self._failed:
            self._publish()
            yield True
        elif self.layers is not None:
            self.layers.flush()
        total = len(self._job.frames) if self._job else 0
        if self._failed:
            message = self._message
        elif stopped:
            message = f"cancelled: {self._done} of {total} frames predicted"
        else:
            message = f"done: {self._done} frames predicted"
            missing = describe_missing(self.layers.table) if self.layers is not None else ""
            if missing:
                message += f"; {missing}"
            self.progress_bar.value = self.progress_bar.max
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        self._name_swap(self._overlays_in_view())  # the run's onset map may have come
        if not self._failed:
            self._say(self._noted(message))
        self.finished.emit(message)

    def _say(self, message: str, error: bool = False, details: str = "") -> None:
        self._message = message
        if message.startswith(("done", "cancelled")) and not error:
            tell(self.status.native, message)  # a run's end
            return
        show(self.status.native, message, details)
        if error:
            show_error(short(message))


def _next_overlay(overlays: list):
    """The overlay after the one shown (the first if none is)."""
    shown = next((i for i, layer in enumerate(overlays) if layer.visible), -1)
    return overlays[(shown + 1) % len(overlays)]


def _predict(stop: Stop, job: Job):
    """The run's body: load the model if needed, yield each finished frame, then the
    regions' clocks once every frame is in (a cancelled run gets none).

    Bad input the user can fix (a file that is no checkpoint, a missing device, a frame
    that cannot be read) ends the run with a :class:`Failed` message, not a traceback.
    """
    from ..core.checkpoint import CheckpointError, load_checkpoint
    from ..core.predictor import Predictor

    model = job.session_model
    try:
        if model is None:
            net, meta = load_checkpoint(job.checkpoint)
            model = SessionModel(net, meta, path=job.checkpoint, origin="checkpoint")
        predictor = Predictor(model.model, model.meta, device=job.device, batch_size=job.batch_size,
                              compile=job.compile)
    except (CheckpointError, ValueError, OSError) as err:
        yield Failed(str(err))
        return
    except Exception as err:  # a RuntimeError would be swallowed by superqt, see Failed
        yield Failed.of(err)
        return
    yield Result(model)
    interval, onset = job.times_for(model.meta)
    policy = TimePolicy(
        frame_interval_h=interval,
        onset_h=onset,
        clamp=model.meta.time.clamp,
        start_offset_h=job.start_offset_h,
    )
    frames = predictor.iter_stack(
        job.stack,
        tiles=job.tiles,
        frames=job.frames,
        boxes=job.boxes,
        first_frame=job.first_frame,
        time=policy,
        should_stop=stop,
    )
    tables = []
    try:
        for done in frames:
            tables.append(done.table)
            yield Result(done)
    except (StackError, ValueError, OSError) as err:
        yield Failed(str(err))
        return
    except Exception as err:  # torch errors (out of memory, shapes) are RuntimeErrors
        yield Failed.of(err)
        return
    if tables and not stop():
        table = pd.concat(tables, ignore_index=True)
        table = add_novelty(table, job.stack, model.meta.calibration.get("novelty", {}))
        flags = table[list(NOVELTY_COLUMNS)] if "novelty" in table else None
        yield Result(Clocks(region_clocks(table, clamp=policy.clamp), policy.clamp,
                            model.meta.calibration, flags))
