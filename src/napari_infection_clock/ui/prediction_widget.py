"""Dock widget: predict infection and infection duration for an image layer's time-lapse.

The core's :meth:`..core.predictor.Predictor.iter_stack` runs in a napari thread worker
and yields one finished frame at a time; the GUI thread only paints those frames into the
output layers (:mod:`.overlays`), so napari stays responsive and results fill in as they
come. Cancel is cooperative: the predictor polls a flag between batches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from psygnal import Signal

from ..core.checkpoint import CheckpointError, load_checkpoint
from ..core.clock import region_clocks
from ..core.device import select_device
from ..core.novelty import NOVELTY_COLUMNS, add_novelty
from ..core.predictor import FramePrediction, Predictor, default_batch_size
from ..core.stack import StackError, stack_from_array
from ..core.targets import DEFAULT_CLAMP, DEFAULT_FRAME_INTERVAL_H, DEFAULT_ONSET_H, TimePolicy
from ..core.tiles import TileSpec
from .devices import device_choices
from .layer_roles import START_OFFSET_H, is_output, time_setting
from .overlays import Grid, PredictionLayers, rectangles_to_boxes, region_grid, tile_grid
from .state import PredictionRun, SessionModel, session_for
from .teardown import on_dock_closed
from .workers import Failed

SOURCE_FILE = "checkpoint file"
SOURCE_SESSION = "model of this session"
MODE_WHOLE = "whole frame"
MODE_TILES = "tile grid"
MODE_REGIONS = "regions (Shapes rectangles)"
#: Seconds between updates of the shared results (the plot redraws on each).
RESULTS_EVERY_S = 0.5


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
    frames: list[int]
    first_frame: int
    checkpoint: Path | None
    session_model: SessionModel | None
    device: str
    batch_size: int
    compile: bool
    frame_interval_h: float
    onset_h: float
    start_offset_h: float


@dataclass
class Clocks:
    """The worker's last answer: every region's clock (core.clock), fitted off the GUI thread."""

    regions: pd.DataFrame
    clamp: tuple[float, float]
    calibration: dict
    novelty: pd.DataFrame | None


class PredictionWidget(Container):
    """Inputs, Run/Cancel and progress for one prediction at a time."""

    #: Emitted on the GUI thread when a run ends, with its status message.
    finished = Signal(str)

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.layers: PredictionLayers | None = None
        self._stop = threading.Event()
        self._progress: progress | None = None
        self._job: Job | None = None
        self._last_results = 0.0
        self._done = 0
        self._failed = False

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
        self.device = ComboBox(label="device", choices=device_choices())
        best = default_batch_size(select_device("auto"))
        self.batch_size = SpinBox(label="batch size", value=best, min=1, max=4096)
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
            ]
        )

        self.image.changed.connect(self._on_image_changed)
        self.frame_interval_h.changed.connect(self._show_time_source)
        self.onset_h.changed.connect(self._show_time_source)
        self.mode.changed.connect(self._on_mode_changed)
        self.source.changed.connect(self._on_source_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.session.model_changed.connect(self._on_session_model)
        self.session.prediction_requested.connect(self.refresh)
        on_dock_closed(self.native, self.close_down)
        self.reset_choices()
        self._on_mode_changed()
        self._on_source_changed()
        self._on_image_changed()

    # -- reacting to inputs ----------------------------------------------------------------
    def _on_image_changed(self, *_):
        layer = self.image.value
        if layer is None or layer.ndim < 3:
            return
        n = int(layer.data.shape[0]) if not layer.multiscale else int(layer.data[0].shape[0])
        self.first.max = self.last.max = n - 1
        self.first.value, self.last.value = 0, n - 1
        self._fill_time()

    def _input_images(self, _widget=None) -> list:
        # 2D images stay listed: choosing one says why it cannot be predicted
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not is_output(ly)]

    def _region_layers(self, _widget=None) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, Shapes) and not is_output(ly)]

    def _fill_time(self) -> None:
        """Frame interval and onset from the layer, else the model, else defaults; the
        line below them says which, and warns about a default."""
        model = self.session.model
        self._time = time_setting(self.image.value, model.meta if model else None)
        self.frame_interval_h.value = self._time.frame_interval_h
        self.onset_h.value = self._time.onset_h
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

    def _prefill_from_model(self, model: SessionModel):
        """Fill frame interval and onset from the model unless the layer carries them."""
        self._fill_time()
        self.model_info.value = model.description

    def close_down(self) -> None:
        """Leave the session and stop a running prediction (the dock was closed)."""
        self.session.model_changed.disconnect(self._on_session_model)
        self.session.prediction_requested.disconnect(self.refresh)
        self.cancel()

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
            self._stop.set()
            self.worker.quit()
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
                "(T, Y, X, 3) time-lapse - split channels first (right-click the layer > "
                "Split Stack)"
            )
        stack = stack_from_array(
            data, axes=axes, name=image.name, frame_interval_h=self.frame_interval_h.value
        )
        height, width = stack.frame_shape
        boxes = None
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
            frames=list(range(first, last + 1)),
            first_frame=self._current_frame(image),
            checkpoint=checkpoint,
            session_model=session_model,
            device=self.device.value,
            batch_size=self.batch_size.value,
            compile=self.compile.value,
            frame_interval_h=self.frame_interval_h.value,
            onset_h=self.onset_h.value,
            start_offset_h=float(image.metadata.get(START_OFFSET_H, 0.0)),
        )

    def _current_frame(self, image: Image) -> int:
        axis = self.viewer.dims.ndim - image.ndim
        world = self.viewer.dims.point[axis]
        return int(round((world - image.translate[0]) / image.scale[0]))

    def _start(self, job: Job) -> None:
        self._job = job
        self._stop.clear()
        self._done = 0
        self._failed = False
        self.progress_bar.max = len(job.frames)
        self.progress_bar.value = 0
        self._progress = progress(total=len(job.frames), desc=f"Predicting {job.image.name}")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        # layers are made (or reset) here, on the GUI thread, before any frame arrives
        self.layers = PredictionLayers(
            self.viewer, job.image, job.grid, job.stack.n_frames, DEFAULT_CLAMP[1]
        )
        self._say("loading the model..." if job.session_model is None else "predicting...")
        worker = _predict(job, self._stop.is_set)
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    # -- results arriving (GUI thread) -------------------------------------------------------
    def _on_yielded(self, item) -> None:
        if isinstance(item, Failed):
            self._on_error(item.message)
        elif isinstance(item, SessionModel):
            self._on_model_ready(item)
        elif isinstance(item, Clocks):
            self.layers.set_clocks(item.regions, item.clamp, item.calibration, item.novelty)
        elif isinstance(item, FramePrediction):
            self.layers.add_frame(item.table)
            self._done = item.done
            self.progress_bar.value = item.done
            self._progress.update(1)
            self._say(f"frame {item.frame}: {item.done} of {item.total} done")
            if time.monotonic() - self._last_results > RESULTS_EVERY_S:
                self._publish()

    def _on_model_ready(self, model: SessionModel) -> None:
        if model is not self.session.model:
            self.session.set_model(model)
        self.model_info.value = model.description
        self.layers.duration.contrast_limits = (0.0, float(model.meta.time.clamp[1]))
        self._say("predicting...")

    def _publish(self) -> None:
        job, layers = self._job, self.layers
        if job is None or layers is None:
            return
        self._last_results = time.monotonic()
        run = PredictionRun(
            n_frames=job.stack.n_frames,
            frame_interval_h=job.frame_interval_h,
            onset_h=job.onset_h,
            start_offset_h=job.start_offset_h,
            mode=self.mode.value,
            regions_layer=self.regions.value.name
            if self.mode.value == MODE_REGIONS and self.regions.value is not None
            else None,
            interval_level=self.session.model.meta.calibration.get("level")
            if self.session.model is not None else None,
        )
        self.session.set_results(job.image.name, layers.table, run)

    def _on_error(self, err: Exception | str) -> None:
        self._failed = True
        self._say(f"prediction failed: {err}", error=True)

    def _on_finished(self) -> None:
        total = len(self._job.frames) if self._job else 0
        if self._stop.is_set():
            message = f"cancelled: {self._done} of {total} frames predicted"
        elif self._failed:
            message = self.status.value
        else:
            message = f"done: {self._done} frames predicted"
        if not self._failed:
            self._publish()
        elif self.layers is not None:
            self.layers.flush()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if not self._failed:
            self._say(message)
        self.finished.emit(message)

    def _say(self, message: str, error: bool = False) -> None:
        self.status.value = message
        if error:
            show_error(message)
        elif message.startswith(("done", "cancelled")):
            show_info(message)


@thread_worker(start_thread=False)
def _predict(job: Job, should_stop):
    """The worker: load the model if needed, yield each finished frame, then the regions'
    clocks once every frame is in (a cancelled run gets none).

    Bad input the user can fix (a file that is no checkpoint, a missing device, a frame
    that cannot be read) ends the run with a :class:`Failed` message, not a traceback.
    """
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
    yield model
    policy = TimePolicy(
        frame_interval_h=job.frame_interval_h,
        onset_h=job.onset_h,
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
        should_stop=should_stop,
    )
    tables = []
    try:
        for done in frames:
            tables.append(done.table)
            yield done
    except (StackError, ValueError, OSError) as err:
        yield Failed(str(err))
        return
    except Exception as err:  # torch errors (out of memory, shapes) are RuntimeErrors
        yield Failed.of(err)
        return
    if tables and not should_stop():
        table = pd.concat(tables, ignore_index=True)
        table = add_novelty(table, job.stack, model.meta.calibration.get("novelty", {}))
        flags = table[list(NOVELTY_COLUMNS)] if "novelty" in table else None
        yield Clocks(region_clocks(table, clamp=policy.clamp), policy.clamp,
                     model.meta.calibration, flags)
