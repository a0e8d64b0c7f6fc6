"""Prediction tables -> napari layers over the image: probability, duration, class, tiles,
and the onset map of the per-region clocks.

The probability, duration and class layers hold one value per item per frame on a small
raster (the tile grid); ``scale`` and ``translate`` put each value's cell centred on its
tile, so the overlay lines up with the image without upsampling anything. Regions drawn
by the user are painted onto a raster of the image's pixels (coarsened for big frames).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ..core.calibration import apply_calibration
from ..core.clock import apply_clocks
from ..core.information import NO_INFORMATION, NO_INFORMATION_LABEL
from ..core.results import RESULT_COLUMNS
from ..core.targets import INFECTED, UNINFECTED
from ..core.tiles import TileSpec, tile_boxes
from .colorbars import CONTINUOUS, make_name, show_named, wanted
from .gc_freeze import collected_after
from .gl_context import painted_later
from .layer_parts import LayerParts, drawn_in_turns, text_drawn_when_there_is_some
from .layer_roles import PREDICTION_TABLE, output_layer, output_metadata

#: Largest side of the raster regions are painted on; bigger frames are coarsened.
REGION_RASTER_MAX = 512
#: Predicted-class labels: 0 is "not predicted (yet)", so the class ids shift by one; items
#: without information (core.information) get a label of their own, left transparent.
CLASS_LABEL = {UNINFECTED: 1, INFECTED: 2, NO_INFORMATION: 3}
CLASS_COLORS = {None: "transparent", 0: "transparent", 1: "#4c9be8", 2: "#e8574c",
                3: "transparent"}
#: What the class layer's values mean (shown on hover and in the prediction dock's legend).
CLASS_NAME = {1: "uninfected", 2: "infected", 3: NO_INFORMATION_LABEL}
SUFFIXES = {
    "probability": "infection probability",
    "duration": "infection duration (h)",
    "class": "predicted class",
    "tiles": "tiles",
    "onset": "infection onset (h)",
}


#: What napari imports the first time it makes a layer of ours (scikit-image's colour
#: conversions, for a Labels layer's default colours). The submodule itself: ``skimage.color``
#: is a lazy package, importing it loads none of its functions.
IMPORTED_ON_FIRST_LAYER = ("skimage.color.colorconv",)


def compute_dash_patterns() -> None:
    """Have vispy compute its line dash patterns, which it caches for the process: every line
    visual's ``DashAtlas`` asks for thirteen, some 115 ms of Python on a 2-core machine, the
    first time in napari's first Labels layer (its polygon overlay), on the GUI thread."""
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()


def _show_colorbar(layer: Image) -> None:
    layer.colorbar.visible = True
    layer.colorbar.tick_length = 3


def _show_without_colorbar(layer: Image) -> None:
    """Show ``layer``, its colorbar and name (made) still hidden: their first paints,
    100-150 ms together on a 2-core machine, come in event-loop turns of their own."""
    show_named(layer, False)
    layer.visible = True


def _drawing_overlays_when_drawn(layer: Labels) -> None:
    """Have napari make ``layer``'s drawing overlays (polygon, brush stroke) the first time
    the user picks a drawing mode, not with the layer: their visuals cost some 50 ms of the
    GUI thread on a 2-core machine, inside a run, for a layer that is looked at. Through
    napari's private ``_overlays``; nothing is done where they are missing."""
    drawing = [overlay for key, overlay in getattr(layer, "_overlays", {}).items()
               if key in ("polygon", "brush_stroke") and overlay.visible]
    if not drawing:
        return
    for overlay in drawing:
        overlay.visible = False

    def on_mode(event=None) -> None:
        if layer.mode != "pan_zoom":
            layer.events.mode.disconnect(on_mode)
            for overlay in drawing:
                overlay.visible = True

    layer.events.mode.connect(on_mode)


def _place(layer, **values) -> None:
    """Set ``values`` (scale, translate, contrast limits) on a reused layer where they
    differ: napari refreshes the layer and the viewer's extent on every set, equal or not
    (15-30 ms of the GUI thread each on a 2-core machine)."""
    for key, value in values.items():
        if not np.array_equal(getattr(layer, key), value):
            setattr(layer, key, value)


def _lay(layer: Shapes, rectangles: list, features: pd.DataFrame) -> None:
    """Lay ``rectangles`` with their ``features`` in the emptied tiles layer (a step of its
    own after the emptying: each is 30-50 ms of napari's Shapes on a 2-core machine)."""
    layer.add_rectangles(rectangles)
    layer.features = features


def frame_in_view(viewer, layer) -> int:
    """The frame of ``layer`` (frames first) the time slider is on."""
    world = viewer.dims.point[viewer.dims.ndim - layer.ndim]
    return int(round((world - layer.translate[0]) / layer.scale[0]))


def layer_name(image_name: str, kind: str) -> str:
    """The name an output layer of ``kind`` is given (what it shows; found by its image's
    id and its kind, never by this name)."""
    return f"{image_name} {SUFFIXES[kind]}"


@dataclass(frozen=True)
class Grid:
    """Where prediction items sit: their boxes, and the raster their values are drawn on.

    ``scale``/``translate`` are in image pixels: raster cell (i, j) is centred on pixel
    ``(i * scale[0] + translate[0], j * scale[1] + translate[1])``.
    """

    boxes: np.ndarray  # (N, 4) y0, x0, y1, x1 (pixel boxes, half-open)
    grid_rc: np.ndarray  # (N, 2) tile row, col (regions: index, 0)
    shape: tuple[int, int]
    scale: tuple[float, float]
    translate: tuple[float, float]
    regions: bool = False

    def cells(self, item: int) -> tuple[slice, slice]:
        """The raster cells item ``item`` covers."""
        if not self.regions:
            r, c = self.grid_rc[item]
            return slice(r, r + 1), slice(c, c + 1)
        fy, fx = self.scale
        y0, x0, y1, x1 = self.boxes[item]
        return (
            slice(int(y0 // fy), int(math.ceil(y1 / fy))),
            slice(int(x0 // fx), int(math.ceil(x1 / fx))),
        )


@contextmanager
def keeping_selection(layers):
    """Add layers without touching the user's selection: napari makes a new layer the active
    one, and the active layer decides the image the docks serve (labels would go to the
    predicted image while the user labels another). Asked not to (the layer list's private
    ``_activate_on_insert``), napari changes nothing, so nothing is announced and undone:
    selecting and restoring cost 30-50 ms of the GUI thread per new layer."""
    layers = getattr(layers, "__wrapped__", layers)  # a dock gets a proxy of the viewer
    before = layers._activate_on_insert
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def tile_grid(height: int, width: int, spec: TileSpec) -> Grid:
    """The tile grid of a frame (whole frame: one cell the size of the frame)."""
    boxes, grid_rc = tile_boxes(height, width, spec)
    if spec.whole_frame:
        size = step = (height, width)
    else:
        size, step = (spec.tile_size,) * 2, (spec.step,) * 2
    shape = (int(grid_rc[:, 0].max()) + 1, int(grid_rc[:, 1].max()) + 1)
    return Grid(
        boxes=boxes,
        grid_rc=grid_rc,
        shape=shape,
        scale=(float(step[0]), float(step[1])),
        translate=((size[0] - 1) / 2, (size[1] - 1) / 2),
    )


def region_grid(height: int, width: int, boxes: np.ndarray) -> Grid:
    """User regions, painted on the frame's pixels (every ``f``-th pixel on big frames)."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    f = max(1, math.ceil(max(height, width) / REGION_RASTER_MAX))
    return Grid(
        boxes=boxes,
        grid_rc=np.stack([np.arange(len(boxes)), np.zeros(len(boxes), np.int64)], axis=1),
        shape=(math.ceil(height / f), math.ceil(width / f)),
        scale=(float(f), float(f)),
        translate=((f - 1) / 2, (f - 1) / 2),
        regions=True,
    )


def rectangles_to_boxes(shapes_layer, height: int, width: int, indices=None) -> np.ndarray:
    """Pixel boxes (y0, x0, y1, x1) of the rectangles of a Shapes layer, clipped to the frame.

    Only the last two (y, x) coordinates count, so rectangles drawn on any frame apply to
    all frames. ``indices`` picks shapes (e.g. the selected ones). Raises ValueError with a
    clear message when nothing usable is there.
    """
    indices = range(len(shapes_layer.data)) if indices is None else sorted(indices)
    boxes = []
    for i in indices:
        if shapes_layer.shape_type[i] != "rectangle":
            continue
        yx = np.asarray(shapes_layer.data[i])[:, -2:]
        y0, x0 = np.floor(yx.min(axis=0) + 0.5).astype(int)
        y1, x1 = np.floor(yx.max(axis=0) + 0.5).astype(int)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        if y1 > y0 and x1 > x0:
            boxes.append((y0, x0, y1, x1))
    if not boxes:
        raise ValueError(
            f"Shapes layer '{shapes_layer.name}' has no rectangles inside the frame; draw "
            "rectangles over the image (rectangle tool) or choose whole-frame or tile mode"
        )
    return np.asarray(boxes, dtype=np.int64)


class PredictionLayers:
    """The output layers of one image, made once and reset for every run (the onset map
    once the clocks are fitted).

    The layers are made one per :meth:`make_next` call (the dock makes one per update
    tick), hidden; every step's canvas repaint comes in a turn of its own, 30 ms later
    (:func:`.gl_context.painted_later`); a continuous one's colorbar is made by the next
    call, and a shown layer (probability, tiles) is shown by the one after, its
    colorbar by the next (each first paint builds vispy's shaders for it: on Mesa's
    software OpenGL, as long as making the layer), so that making them never holds the GUI
    thread for long. The continuous ones (probability, duration, onset) carry colorbars and
    are shown one at a time: showing one hides the others, whose colours would mix. The
    class layer names its classes on hover.
    """

    KINDS = ("probability", "duration", "class", "tiles")

    def __init__(self, viewer, image, grid: Grid, n_frames: int, clamp_max: float):
        self.viewer = viewer
        self.image = image
        self.grid = grid
        self.n_frames = n_frames
        self.clamp_max = float(clamp_max)
        self._table = pd.DataFrame(columns=list(RESULT_COLUMNS))
        self._pending: list[pd.DataFrame] = []
        self._raster = (n_frames, *grid.shape)
        t_scale, t_translate = float(image.scale[0]), float(image.translate[0])
        iy, ix = np.asarray(image.scale[-2:], float)
        ty, tx = np.asarray(image.translate[-2:], float)
        cell_scale = (t_scale, grid.scale[0] * iy, grid.scale[1] * ix)
        cell_translate = (t_translate, ty + grid.translate[0] * iy, tx + grid.translate[1] * ix)
        self._placed = {"scale": cell_scale, "translate": cell_translate}
        self.probability = self.duration = self.classes = self.tiles = None
        self._parts = LayerParts(viewer)  # a new layer's canvas visual and controls
        self._finish: list = []  # steps left of the layer made last (show it, its colorbar)
        #: Whether :meth:`set_clocks` has given the table and the onset map their clocks.
        self.clocks_in = False
        self.onset = self._existing("onset")
        if isinstance(self.onset, Image):  # a previous run's map must not pass for this one's
            self.onset.data = np.full(grid.shape, np.nan, np.float32)

    @property
    def ready(self) -> bool:
        return self.tiles is not None and not self._finish and not self._parts.pending

    def make_next(self) -> bool:
        """Make (or reset) the next missing layer, or take the next step of the one made last
        (show it; show its colorbar: each first paint is a step of its own); True once all
        four layers are there."""
        if self.ready:
            return True
        with collected_after(), painted_later(self.viewer):  # the repaint: a turn of its own
            self._make_next()
        return self.ready

    def _make_next(self) -> None:
        placed, raster = self._placed, self._raster
        if self._parts.make_next():
            return
        if self._finish:
            self._finish.pop(0)()
        elif self.probability is None:
            self.probability = self._image(
                "probability",
                np.full(raster, np.nan, np.float32),
                colormap="viridis",
                contrast_limits=(0.0, 1.0),
                opacity=0.6,
                blending="translucent",
                **placed,
            )
        elif self.duration is None:
            self.duration = self._image(
                "duration",
                np.full(raster, np.nan, np.float32),
                colormap="plasma",
                contrast_limits=(0.0, self.clamp_max),
                opacity=0.6,
                blending="translucent",
                visible=False,  # one continuous overlay at a time
                **placed,
            )
        elif self.classes is None:
            self.classes = self._labels(np.zeros(raster, np.uint8), **placed)
        else:
            self.tiles = self._tiles()

    # -- layer creation / reuse ------------------------------------------------------
    @contextmanager
    def _adding(self):
        """Add a layer, hidden: the user's selection kept, the canvas repainted a turn later,
        napari's canvas visual and layer controls for it made by the next steps."""
        with keeping_selection(self.viewer.layers), painted_later(self.viewer), \
                self._parts.adding():
            yield

    def _existing(self, kind: str):
        return output_layer(self.viewer, self.image, kind)

    def _image(self, kind, data, visible=True, **kwargs):
        """Reset this image's layer of ``kind``, or make it: hidden, its colorbar made by
        the next step (:meth:`make_next`) while the layer is still hidden (nothing to paint
        yet: making one costs 60-100 ms, its first paint as much), and, if ``visible``, the
        layer shown by the one after and its colorbar by the next."""
        layer = self._existing(kind)
        if not isinstance(layer, Image):
            self._remove(layer)
            with self._adding():
                layer = self.viewer.add_image(data, name=layer_name(self.image.name, kind),
                                              metadata=output_metadata(self.image, kind),
                                              visible=False, **kwargs)
            layer.events.visible.connect(
                lambda event, kind=kind, shown=layer: self._show_alone(kind, shown))
            self._finish.append(lambda: _show_colorbar(layer))
            self._finish.append(lambda: self._named(layer, shown=not visible))
            if visible:  # the layer's first paint, then its colorbar's, a visual a step
                self._finish.append(lambda: _show_without_colorbar(layer))
                self._finish.append(self._in_turns(
                    lambda: setattr(layer.colorbar, "visible", wanted(self.viewer, layer)),
                    layer, layer.colorbar))
                self._finish.append(lambda: self._named(layer, shown=True))
            return layer
        layer.data = data
        _place(layer, **{key: kwargs[key] for key in ("scale", "translate", "contrast_limits")})
        return layer

    def _labels(self, data, **placed):
        layer = self._existing("class")
        if not isinstance(layer, Labels):
            self._remove(layer)
            layer = Labels(
                data,
                name=layer_name(self.image.name, "class"),
                colormap=DirectLabelColormap(color_dict=CLASS_COLORS),
                opacity=0.4,
                visible=False,
                metadata=output_metadata(self.image, "class"),
                features=pd.DataFrame({"index": list(CLASS_NAME),
                                       "class": CLASS_NAME.values()}),
                **placed,
            )
            _drawing_overlays_when_drawn(layer)
            with self._adding():
                self.viewer.add_layer(layer)
            return layer
        layer.data = data
        _place(layer, **placed)
        return layer

    def _tiles(self):
        """The tiles layer: one rectangle per tile (or region) on every frame, made once
        per run with the grid's boxes and their row, column and box as ``features`` (napari
        shows them on hover, the plot reads a selection's); the run's table, every frame's
        rows, is kept in its metadata (:data:`PREDICTION_TABLE`: what the writer saves)."""
        boxes = self.grid.boxes.astype(float) - 0.5  # pixel edges around the box's pixels
        y0, x0, y1, x1 = boxes.T
        rectangles = list(np.stack([np.stack(c, axis=1) for c in (
            (y0, x0), (y0, x1), (y1, x1), (y1, x0))], axis=1))
        features = pd.DataFrame({
            "tile_row": self.grid.grid_rc[:, 0], "tile_col": self.grid.grid_rc[:, 1],
            **{k: self.grid.boxes[:, i] for i, k in enumerate(("y0", "x0", "y1", "x1"))},
        })
        placed = {"scale": tuple(self.image.scale[-2:]),
                  "translate": tuple(self.image.translate[-2:])}
        layer = self._existing("tiles")
        if isinstance(layer, Shapes):  # a previous run's: the same grid stays as it is
            shown = layer.features.reindex(columns=features.columns).reset_index(drop=True)
            if not shown.equals(features):  # another grid: laid by the next step
                layer.data = []
                self._finish.append(lambda: _lay(layer, rectangles, features))
            _place(layer, **placed)
            layer.metadata[PREDICTION_TABLE] = self._table
            return layer
        self._remove(layer)
        with self._adding():
            layer = self.viewer.add_shapes(
                rectangles,
                shape_type="rectangle",
                visible=False,  # shown by the next step: its first paint is a step of its own
                name=layer_name(self.image.name, "tiles"),
                face_color="transparent",
                edge_color="white",
                edge_width=0.5,
                opacity=0.5,
                features=features,
                metadata={**output_metadata(self.image, "tiles"),
                          PREDICTION_TABLE: self._table},
                **placed,
            )
        shown = self._in_turns(lambda: setattr(layer, "visible", True), layer)
        self._finish.append(  # its empty text hidden first: never one of the visuals shown
            lambda: (text_drawn_when_there_is_some(self.viewer, layer), shown()))
        return layer

    def _named(self, layer, shown: bool) -> None:
        """Make ``layer``'s name overlay (hidden layer) and, with ``shown``, show it and its
        colorbar where :func:`.colorbars.wanted` (only the image in view's)."""
        if not layer.visible:  # napari makes the name's visual now: nothing to paint
            make_name(layer)
        if shown:
            show_named(layer, wanted(self.viewer, layer))

    def _in_turns(self, show, layer, overlay=None):
        """A step that calls ``show()`` with one of ``layer``'s (or ``overlay``'s) visuals
        drawn; the next steps show the others, one each (:func:`.layer_parts.drawn_in_turns`)."""

        def step() -> None:
            later = drawn_in_turns(self.viewer, layer, overlay)
            show()
            self._finish[:0] = later

        return step

    def _show_alone(self, kind: str, shown) -> None:
        """``shown``, this image's overlay of ``kind``, was made visible: hide its other
        continuous overlays (told apart by kind: a dock opened from the Plugins menu has a
        proxy of the viewer, and each look-up of a layer through it is a new proxy object)."""
        if shown.visible:
            for other_kind in CONTINUOUS:
                other = self._existing(other_kind)
                if other is not None and other_kind != kind:
                    other.visible = False

    def _remove(self, layer) -> None:
        if layer is not None:
            self.viewer.layers.remove(layer)

    # -- filling in --------------------------------------------------------------------
    def add_frames(self, tables: list[pd.DataFrame]) -> None:
        """Show finished frames: paint their values (the table takes their rows at the
        next :meth:`flush`). Items without information stay empty (NaN, a transparent class).

        Called with every frame finished since the last update, a few times per second:
        one refresh per layer however many frames came in, none when the frame in view is
        not among them; the tiles layer, the same on every frame, is not touched (adding
        each frame's rectangles cost 60-140 ms a tick).
        """
        tables = [t for t in tables if not t.empty]
        if not tables:
            return
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        items = self._items(table)
        frames = table["frame"].to_numpy(int)
        p = table["p_infected"].to_numpy(np.float32)
        classes = table["pred_class"].to_numpy()
        infected = classes == INFECTED
        duration = np.where(infected, table["pred_time_h"].to_numpy(np.float32), np.nan)
        labels = np.select([infected, classes == NO_INFORMATION],
                           [CLASS_LABEL[INFECTED], CLASS_LABEL[NO_INFORMATION]],
                           CLASS_LABEL[UNINFECTED])
        for layer, values in (
            (self.probability, p),
            (self.duration, duration),
            (self.classes, labels),
        ):
            data = layer.data
            for frame, item, value in zip(frames, items, values):
                data[(frame, *self.grid.cells(item))] = value
            if self._on_screen(layer, frames):
                layer.refresh(extent=False, highlight=False)  # same shape, nothing selected
        self._pending.append(table)

    def _on_screen(self, layer, frames: np.ndarray) -> bool:
        """Whether one of ``frames`` is in view: only then does a layer need redrawing (the
        frame on screen is predicted first). napari slices the data anew when the user
        moves the slider, so the frames written meanwhile show then."""
        if self.viewer.dims.ndim - layer.ndim in self.viewer.dims.displayed:  # 3D: all of them
            return True
        return bool(np.any(frames == frame_in_view(self.viewer, layer)))

    def _items(self, table: pd.DataFrame) -> list[int]:
        """Grid item index of each row (rows carry tile row/col, the grid knows its order)."""
        lookup = {(int(r), int(c)): i for i, (r, c) in enumerate(self.grid.grid_rc)}
        return [lookup[(int(r), int(c))] for r, c in zip(table["tile_row"], table["tile_col"])]

    def set_clocks(self, regions: pd.DataFrame, clamp, calibration: dict | None = None,
                   novelty: pd.DataFrame | None = None) -> None:
        """Attach the items' novelty flags (core.novelty; rows in the table's order), the
        per-region clocks (core.clock) and the model's calibrated answers (core.calibration)
        to the table; the next steps (:meth:`make_next`) show the onset map: one value per
        tile or region, hours since the start when it got infected (empty where it did
        not), with a colorbar, over every frame."""
        table = self.flush()
        if novelty is not None and len(novelty) == len(table):
            table = table.assign(**{c: novelty[c].to_numpy() for c in novelty.columns})
        table = apply_clocks(table, regions, clamp)
        self._table = apply_calibration(table, calibration or {}, clamp)
        self.tiles.metadata[PREDICTION_TABLE] = self._table
        onset = np.full(self.grid.shape, np.nan, np.float32)
        for item, value in zip(self._items(regions), regions["onset_h"].to_numpy(np.float32)):
            onset[self.grid.cells(item)] = value
        self._finish.append(lambda: self._onset_map(onset))

    def _onset_map(self, onset: np.ndarray) -> None:
        finite = onset[np.isfinite(onset)]
        limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if limits[1] <= limits[0]:
            limits = (limits[0], limits[0] + 1.0)
        placed = {"scale": self.probability.scale[1:], "translate": self.probability.translate[1:]}
        self.onset = self._image("onset", onset, colormap="magma", contrast_limits=limits,
                                 opacity=0.7, blending="translucent", visible=False, **placed)
        self.clocks_in = True

    @property
    def table(self) -> pd.DataFrame:
        """All rows so far (flushed first)."""
        return self.flush()

    def flush(self) -> pd.DataFrame:
        """Add the frames shown since the last flush to the run's table (also the tiles
        layer's :data:`PREDICTION_TABLE`).

        Done when results are published, not on every frame: concatenating per frame would
        cost the GUI thread time that grows with the square of the run.
        """
        if self._pending:
            parts = ([self._table] if len(self._table) else []) + self._pending
            self._table = pd.concat(parts, ignore_index=True)
            self._pending = []
            self.tiles.metadata[PREDICTION_TABLE] = self._table
        return self._table
