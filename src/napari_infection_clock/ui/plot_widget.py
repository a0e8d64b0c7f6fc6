"""Dock widget: infection probability and duration over experiment time, linked to the slider.

Curves are redrawn when a prediction table changes; the current-frame marker only moves
(``set_xdata``) when the time slider does, and a click on the plot moves the slider.
Selecting tiles or region rectangles adds one curve per selected item. Every change is made
inside the canvas's ``editing`` block; the figure is rendered off the GUI thread
(``figures.ThemedCanvas``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from napari.layers import Shapes
from napari.utils.notifications import show_error
from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
)

from ..core.atomic import OutputNotWritable, write_atomic
from ..core.clock import DEFAULT_LEVEL, RegionClock
from .docking import place_figure
from .figures import DockedFigure, legend_above
from .layer_roles import (
    IMAGE_ID,
    annotation_key,
    image_id,
    image_of,
    image_with_id,
    is_output_of,
)
from .messages import fit_messages
from .overlays import rectangles_to_boxes
from .state import PredictionRun, session_for
from .teardown import on_dock_closed
from .timeseries import answer_at, estimate_onset, frame_summary, item_series

MAX_ITEM_CURVES = 8
#: One colour per selected item, none the well's own curves' (C0, C1, C3) nor grey (the
#: ideal line, the clocks' legend entry): matplotlib's C2, C4-C6, C8, C9 and two of tab20b.
ITEM_COLORS = ("C2", "C4", "C5", "C6", "C8", "C9", "#393b79", "#8c6d31")
#: "Export PNG": a figure for a page (7 x 5 in at 300 dpi, 2100 x 1500 px), whatever the
#: dock's size on screen (708 x 418 px in a 1900 x 1000 window).
EXPORT_SIZE_IN, EXPORT_DPI = (7.0, 5.0), 300


def _with_suffix(path, suffix: str) -> Path:
    """``path`` ending in ``suffix`` ("plot" -> "plot.csv"); a name that has it is kept."""
    path = Path(path)
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def _grown(before: pd.DataFrame, table) -> bool:
    """Whether ``table`` is ``before`` with rows added (a run's next publish: its frames
    are appended as they finish)."""
    if table is None or len(table) <= len(before) or list(table.columns) != list(before.columns):
        return False
    n = len(before)
    return all(np.array_equal(table[c].to_numpy()[:n], before[c].to_numpy(), equal_nan=True)
               for c in ("frame", "tile_row", "tile_col", "p_infected"))


def _parts_of(fit: RegionClock | None) -> tuple[bool, bool]:
    """Which artists the image's fit has: its onset and clock, and their band."""
    return fit is not None, fit is not None and bool(np.isfinite([fit.onset_low_h,
                                                                   fit.onset_high_h]).all())


def _onset_label(fit: RegionClock) -> str:
    return f"estimated onset {fit.onset_h:.2f} h"


class TimeSeriesPlot(DockedFigure):
    """Mean probability, fraction infected and median duration of one prediction vs time.

    It shows the image a prediction last ran on, or the image (or output layer) the user
    makes active, when that image has a prediction. Images are listed by name and known
    by id: a renamed image keeps its curves, under its new name.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, figsize=(5, 4), min_height=160)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.summary = pd.DataFrame()
        self.items: dict[str, pd.DataFrame] = {}
        self._onset_of: pd.DataFrame | None = None  # the table self.onset was fitted on
        self.onset: RegionClock | None = None
        self._plotted: tuple | None = None  # what the artists were made for (_what_is_plotted)
        self._lines: list = []  # the curves that follow the table (_line_data)
        self._fit: tuple | None = None  # the image's onset marker, clock and band
        self._watched: list = []
        self._closed = False
        on_dock_closed(self, self.cleanup)
        place_figure(self)

        self.choice = QComboBox()
        self.choice.setToolTip("the image whose prediction is plotted")
        self.ax_p, self.ax_t = self.figure.subplots(2, 1, sharex=True)
        self.onset_label = QLabel("no prediction yet")
        fit_messages(self.onset_label)
        self.answer_label = QLabel("")
        fit_messages(self.answer_label)
        self.answer_label.setToolTip("each selected item's clock at the current frame")
        png, csv = QPushButton("Export PNG..."), QPushButton("Export CSV...")
        png.clicked.connect(lambda: self._ask_and_export("PNG image (*.png)", self.export_png))
        csv.clicked.connect(lambda: self._ask_and_export("CSV table (*.csv)", self.export_csv))

        layout = self.layout()
        layout.insertWidget(0, self.choice)
        layout.insertWidget(1, self.onset_label)
        layout.insertWidget(2, self.answer_label)
        buttons = QHBoxLayout()
        buttons.addWidget(png)
        buttons.addWidget(csv)
        layout.addLayout(buttons)

        self.markers = [
            ax.axvline(np.nan, color="0.3", lw=1, ls=":") for ax in (self.ax_p, self.ax_t)
        ]
        self.choice.currentIndexChanged.connect(self._redraw_on)
        self.session.results_changed.connect(self._on_results)
        self.session.image_renamed.connect(self._on_renamed)
        self.session.labels_changed.connect(self._on_labels)
        self.viewer.dims.events.current_step.connect(self._move_marker)
        self.viewer.layers.events.inserted.connect(self._watch_shapes)
        self.viewer.layers.events.removed.connect(self._redraw_on)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self.canvas.mpl_connect("button_press_event", self._on_click)
        self._watch_shapes()
        for key in self.session.results:
            self.choice.addItem(self.session.name_of(key), key)
        self.redraw()

    # -- what is plotted -----------------------------------------------------------------
    @property
    def image_key(self) -> str | None:
        """The id of the image whose prediction is plotted."""
        return self.choice.currentData()

    @property
    def image_name(self) -> str | None:
        return self.choice.currentText() or None

    @property
    def image(self):
        """The plotted image's layer (None once it was removed)."""
        return image_with_id(self.viewer, self.image_key)

    @property
    def info(self) -> PredictionRun | None:
        """How the plotted image's table was made (None before its first prediction)."""
        return self.session.runs.get(self.image_key)

    def _on_results(self, key: str) -> None:
        """A prediction changed: show it (a new run on another image is followed)."""
        index = self.choice.findData(key)
        if index < 0:
            with QSignalBlocker(self.choice):  # the first item is chosen: plotted below, once
                self.choice.addItem(self.session.name_of(key), key)
            index = self.choice.count() - 1
        else:
            self.choice.setItemText(index, self.session.name_of(key))
        if key != self.image_key:
            self.choice.setCurrentIndex(index)  # redraws through currentIndexChanged
        else:
            self.redraw()

    def _on_renamed(self, image) -> None:
        """An image was renamed: its entry (and the plot's title, if shown) say the new name."""
        index = self.choice.findData(image_id(image))
        if index >= 0:
            self.choice.setItemText(index, image.name)
            if index == self.choice.currentIndex():
                self.redraw()

    def _follow_active(self, event=None) -> None:
        """Show the prediction of the layer the user made active (an image or its outputs)."""
        image = image_of(self.viewer, self.viewer.layers.selection.active)
        if image is None:
            return
        key = image_id(image)
        if key in self.session.results and key != self.image_key:
            self.choice.setCurrentIndex(self.choice.findData(key))

    def _watch_shapes(self, *_):
        """Redraw when the selection of any Shapes layer changes (tiles or regions)."""
        for layer in self.viewer.layers:
            if isinstance(layer, Shapes) and layer not in self._watched:
                layer.selected_data.events.items_changed.connect(self._on_selection)
                self._watched.append(layer)

    def _on_selection(self, *_):
        if self.image_key is not None:
            self.redraw()

    def selected_items(self) -> list[tuple[int, int]]:
        """(tile row, col) of selected tiles of this prediction, or of selected regions."""
        table = self.session.results.get(self.image_key)
        image = self.image
        if table is None or table.empty:
            return []
        regions = self.info.regions_id if self.info is not None else None
        found: list[tuple[int, int]] = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Shapes) or not layer.selected_data:
                continue
            if image is not None and is_output_of(layer, image, "tiles"):
                rows = layer.features.iloc[sorted(layer.selected_data)]
                found += list(zip(rows["tile_row"].astype(int), rows["tile_col"].astype(int)))
            elif regions is not None and layer.metadata.get(IMAGE_ID) == regions:
                found += self._regions_to_items(layer, table)
        return list(dict.fromkeys(found))[:MAX_ITEM_CURVES]

    def _regions_to_items(self, layer: Shapes, table: pd.DataFrame) -> list[tuple[int, int]]:
        height, width = int(table["y1"].max()), int(table["x1"].max())
        if self.image is not None:
            height, width = self.image.data.shape[1:3]
        try:
            boxes = rectangles_to_boxes(layer, height, width, layer.selected_data)
        except ValueError:
            return []
        keys = table[["y0", "x0", "y1", "x1", "tile_row", "tile_col"]].drop_duplicates()
        out = []
        for box in boxes.tolist():
            hit = keys[(keys[["y0", "x0", "y1", "x1"]].to_numpy() == box).all(axis=1)]
            out += list(zip(hit["tile_row"].astype(int), hit["tile_col"].astype(int)))
        return out

    # -- drawing -------------------------------------------------------------------------
    def _redraw_on(self, *_) -> None:
        self.redraw()

    def redraw(self) -> None:
        """Show the chosen prediction (the marker is kept and re-placed). A table that only
        grew since the last redraw (the same run with more frames, twice a second) moves
        the curves there are; anything else makes them anew. The figure is rendered off
        the GUI thread once this turn is over."""
        with self.canvas.editing():
            if not self._update():
                self._plot()

    def _results(self) -> pd.DataFrame | None:
        """The chosen image's prediction table."""
        return self.session.results.get(self.image_key) if self.image_key else None

    def _what_is_plotted(self) -> tuple:
        """What the artists depend on besides the table's values: each change makes them anew."""
        return (self.image_key, self.image_name, self.info, tuple(self.selected_items()),
                self._ideal_onset_h())

    def _ideal_onset_h(self) -> float | None:
        """Where the ideal clock (duration t - onset) starts: the run's onset, unless the
        user labelled the well mock in the annotation dock (no infection to time)."""
        if self.info is None or self.info.onset_h is None:
            return None
        return None if self._labelled_mock() else self.info.onset_h

    def _labelled_mock(self) -> bool:
        store = self.session.labels_of(self.image)
        return store is not None and store.condition == "mock"

    def _on_labels(self, stack: str) -> None:
        """A well's labels or condition changed: redraw when it is this one and that changed
        what is plotted (labelled mock or not), not at every label the user sets."""
        if (self.image is not None and annotation_key(self.image) == stack
                and self._plotted is not None and self._what_is_plotted() != self._plotted):
            self.redraw()

    def _update(self) -> bool:
        """Put the curves there are on the table, the plotted one with frames added, when
        all else is as plotted (image, run, selection, the fit's parts): making them anew,
        with their legends, held the GUI thread 40-100 ms a redraw on 2 cores. False (nothing
        changed) when it is not so."""
        table, shown = self._results(), self._onset_of  # shown: the table plotted
        if (shown is None or not _grown(shown, table) or "onset_h" in table
                or self._what_is_plotted() != self._plotted):
            return False
        summary = frame_summary(table)
        onset = estimate_onset(summary)
        same_parts = _parts_of(onset) == _parts_of(self.onset)
        self._onset_of, self.onset = table, onset  # not fitted again if made anew
        if not same_parts:  # the fit appeared, or its band did
            return False
        self.summary = summary
        self.items = {label: item_series(table, item) for label, item in self._item_labels()}
        for line, (x, y) in zip(self._lines, self._line_data(), strict=True):
            line.set_data(x, y)
        if onset is not None:
            self._place_fit()
        self._describe_onset()
        for ax in (self.ax_p, self.ax_t):
            ax.relim()
            ax.autoscale_view()
        self.ax_p.set_ylim(-0.05, 1.05)
        self._move_marker()
        return True

    def _plot(self) -> None:
        table = self._results()
        for ax in (self.ax_p, self.ax_t):
            for artist in [*ax.lines, *ax.collections]:
                if artist not in self.markers:
                    artist.remove()
        self._lines, self._fit = [], None
        if table is None or table.empty:
            self.summary, self.items, self.onset, self._onset_of = pd.DataFrame(), {}, None, None
            self.figure.suptitle("")
            for ax in (self.ax_p, self.ax_t):
                legend_above(ax)
            self._name_items({}, False)
            self.onset_label.setText("no prediction yet: run 'Predict infection'")
            return
        self._plotted = self._what_is_plotted()
        self.summary = frame_summary(table)
        # the curves that follow the table, in the order of _line_data
        self._lines = [
            *self.ax_p.plot([], [], "-o", ms=3, color="C1", label="mean P(infected)"),
            *self.ax_p.plot([], [], "--", color="C0", label="fraction infected"),
            *self.ax_t.plot([], [], "-o", ms=3, color="C3", label="median duration"),
        ]
        self.ax_p.set_ylim(-0.05, 1.05)
        self.ax_p.set_ylabel("probability")
        onset_h = self._ideal_onset_h()
        if onset_h is not None:
            self._lines += self.ax_t.plot([], [], color="0.5", lw=1,
                                          label=f"ideal t - {onset_h:g} h")
        self.items, colors, item_artists = {}, {}, []
        for i, (label, item) in enumerate(self._item_labels()):
            series = self.items[label] = item_series(table, item)
            color = colors[label] = ITEM_COLORS[i]
            curves = [*self.ax_p.plot([], [], lw=1, color=color, label=label),
                      *self.ax_t.plot([], [], lw=1, color=color, label=label)]
            self._lines += curves
            item_artists += curves
            if "onset_h" in series and np.isfinite(series["onset_h"].iloc[0]):
                item_artists.append(self._draw_item_clock(series, color, f"{label} clock"))
        for line, (x, y) in zip(self._lines, self._line_data(), strict=True):
            line.set_data(x, y)
        if self._onset_of is not table:  # the bootstrap runs on the GUI thread: once per table
            self._onset_of, self.onset = table, estimate_onset(self.summary)
        if self.onset is not None:
            self._draw_fit()
        self._describe_onset()
        self.ax_t.set_xlabel("experiment time (h)")
        self.ax_t.set_ylabel("duration (h)")
        for ax in (self.ax_p, self.ax_t):
            ax.relim()
            ax.autoscale_view()
        legend_above(self.ax_p, leave_out=item_artists)
        legend_above(self.ax_t, leave_out=item_artists)
        self._name_items(colors, clocks=len(item_artists) > 2 * len(colors))
        self.figure.suptitle(self.image_name, fontsize="small")
        self.ax_p.set_ylim(-0.05, 1.05)
        self._move_marker()

    def _name_items(self, colors: dict[str, str], clocks: bool) -> None:
        """The selected items named once, in a legend beside the axes (right): each item's
        colour, and the dashed line of an item's clock. In the legends above the axes each
        item took a row of one and two of the other: with 2 items the lower axes kept
        ~40 px of a 1900 x 1000 window's plot, with 8 none."""
        for legend in list(self.figure.legends):
            legend.remove()
        if not colors:
            return
        handles = [Line2D([], [], lw=1.5, color=color, label=label)
                   for label, color in colors.items()]
        if clocks:
            handles.append(Line2D([], [], lw=1.2, ls="--", color="0.4", label="its clock"))
        self.figure.legend(handles=handles, loc="outside right upper", fontsize="x-small",
                           frameon=False)

    def _item_labels(self) -> list[tuple[str, tuple[int, int]]]:
        return [(self._item_label(item), item) for item in self.selected_items()]

    def _line_data(self) -> list[tuple]:
        """(x, y) of each curve that follows the table, in the order :meth:`_plot` makes them."""
        s = self.summary
        hours = s["hours"]
        data = [(hours, s["mean_p_infected"]), (hours, s["fraction_infected"]),
                (hours, s["median_duration_h"])]
        onset_h = self._ideal_onset_h()
        if onset_h is not None:
            data.append((hours, np.maximum(hours - onset_h, 0)))
        for series in self.items.values():
            data += [(series["hours"], series["p_infected"]),
                     (series["hours"], series["duration_h"])]
        return data

    def _item_label(self, item: tuple[int, int]) -> str:
        if self.info is not None and self.info.regions:
            return f"region {item[0]}"
        return f"tile ({item[0]}, {item[1]})"

    def _draw_clock(self, hours, onset, low, high, color, label) -> tuple:
        """The fitted clock ``max(t - onset, 0)`` and its band from the onset's interval
        (None when unbounded)."""
        hours = np.asarray(hours, float)
        line, = self.ax_t.plot(hours, np.maximum(hours - onset, 0), ls="--", lw=1.2,
                               color=color, label=label)
        band = None
        if np.isfinite(low) and np.isfinite(high):
            band = self.ax_t.fill_between(hours, np.maximum(hours - high, 0),
                                          np.maximum(hours - low, 0), color=color, alpha=0.2,
                                          lw=0)
        return line, band

    def _draw_item_clock(self, series: pd.DataFrame, color, label):
        """An item's fitted clock (returned) with its band: the calibrated interval of its
        consistent times when the model's is calibrated over regions (none when too few
        validation regions leave it unbounded), else the onset's bootstrap interval
        (uncalibrated)."""
        first = series.iloc[0]
        interval = self.info.clock_interval if self.info else None
        if interval is None or not interval.calibrated or "consistent_low_h" not in series:
            return self._draw_clock(series["hours"], first["onset_h"], first["onset_low_h"],
                                    first["onset_high_h"], color, label)[0]
        line, _ = self._draw_clock(series["hours"], first["onset_h"], np.nan, np.nan, color,
                                   label)
        if interval.bounded:
            self.ax_t.fill_between(series["hours"], series["consistent_low_h"],
                                   series["consistent_high_h"], color=color, alpha=0.2, lw=0)
        return line

    def _draw_fit(self) -> None:
        """The image's estimated onset and fitted clock with its band."""
        fit = self.onset
        marker = self.ax_t.axvline(fit.onset_h, color="C3", lw=1, ls=":",
                                   label=_onset_label(fit))
        self._fit = (marker, *self._draw_clock(self.summary["hours"], fit.onset_h,
                                               fit.onset_low_h, fit.onset_high_h, "C3",
                                               "fitted clock"))

    def _place_fit(self) -> None:
        """Move the fit's artists (and its legend entry) to a new fit of the same parts."""
        fit, (marker, clock, band) = self.onset, self._fit
        hours = self.summary["hours"].to_numpy(float)
        marker.set_xdata([fit.onset_h, fit.onset_h])
        clock.set_data(hours, np.maximum(hours - fit.onset_h, 0))
        if band is not None:
            band.set_data(hours, np.maximum(hours - fit.onset_high_h, 0),
                          np.maximum(hours - fit.onset_low_h, 0))
        label, before = _onset_label(fit), marker.get_label()
        if label != before:
            marker.set_label(label)
            for text in self.ax_t.get_legend().get_texts():
                if text.get_text() == before:
                    text.set_text(label)

    def _describe_onset(self) -> None:
        if self.onset is None:
            self.onset_label.setText("estimated onset: no frame is classified infected")
            return
        fit = self.onset
        band = (f" ({fit.onset_low_h:.2f}-{fit.onset_high_h:.2f} h, {DEFAULT_LEVEL * 100:.0f} % "
                "bootstrap, uncalibrated)" if np.isfinite(fit.onset_low_h) else "")
        text = (f"estimated onset: {fit.onset_h:.2f} h{band}, robust fit of t - duration over "
                f"{fit.n_votes} infected frames")
        onset_h = self._ideal_onset_h()
        if onset_h is not None:
            text += f"; set onset {onset_h:g} h"
        elif self._labelled_mock():
            text += "; the well is labelled mock (no infection expected)"
        self.onset_label.setText(text)

    # -- the time slider -----------------------------------------------------------------
    def _time_axis(self) -> tuple[int, float, float]:
        """World axis of the image's time dimension, and the image's time scale/translate."""
        image = self.image
        if image is None:
            return 0, 1.0, 0.0
        return self.viewer.dims.ndim - image.ndim, float(image.scale[0]), float(image.translate[0])

    def current_frame(self) -> int:
        axis, scale, translate = self._time_axis()
        return int(round((self.viewer.dims.point[axis] - translate) / scale))

    def hours_of(self, frame) -> float:
        return (self.info or PredictionRun(n_frames=1)).hours_of(frame)

    def frame_at(self, hours: float) -> int:
        run = self.info or PredictionRun(n_frames=1)
        frame = (hours - run.start_offset_h) / run.frame_interval_h
        return int(np.clip(round(frame), 0, max(run.n_frames - 1, 0)))

    def _move_marker(self, *_):
        """Put the marker on the current frame and say the items' answers there; the figure
        is drawn only if the marker moved (napari announces a step for each layer a run
        adds, on the same frame, and while the slider moves before any prediction)."""
        frame = self.current_frame()
        x = self.hours_of(frame) if self.info else np.nan
        if not np.array_equal(self.markers[0].get_xdata(), [x, x], equal_nan=True):
            self.canvas.edit_between_renders(self._place_markers)  # the slider may be playing
        level = self.info.interval_level if self.info else None
        interval = self.info.clock_interval if self.info else None
        answers = [f"{label}: {text}" for label, series in self.items.items()
                   if (text := answer_at(series, frame, level, interval))]
        self.answer_label.setText(f"at {x:.1f} h: " + "; ".join(answers) if answers else "")

    def _place_markers(self) -> None:
        x = self.hours_of(self.current_frame()) if self.info else np.nan
        for marker in self.markers:
            marker.set_xdata([x, x])

    def _on_click(self, event) -> None:
        if event.inaxes not in (self.ax_p, self.ax_t) or event.xdata is None or not self.info:
            return
        axis, scale, translate = self._time_axis()
        self.viewer.dims.set_point(axis, self.frame_at(event.xdata) * scale + translate)

    # -- export --------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """What the plot shows, one row per frame (selected items as extra columns)."""
        out = self.summary.copy()
        onset_h = self._ideal_onset_h()
        if onset_h is not None and not out.empty:
            out["ideal_duration_h"] = np.maximum(out["hours"] - onset_h, 0)
        if self.onset is not None and not out.empty:
            out["fitted_duration_h"] = np.maximum(out["hours"] - self.onset.onset_h, 0)
        for label, series in self.items.items():
            cols = series.set_index("frame")[["p_infected", "duration_h"]]
            cols.columns = [f"{c} {label}" for c in cols.columns]
            out = out.join(cols, on="frame")
        return out

    def export_png(self, path) -> Path:
        """The figure (its title names the image) as a PNG file for a page: laid out at
        :data:`EXPORT_SIZE_IN` and :data:`EXPORT_DPI` whatever the dock's size, light
        whatever napari's theme is (what a paper or slide takes); the figure on screen
        keeps its size."""
        return write_atomic(_with_suffix(path, ".png"), self._print_png, ".png")

    def _print_png(self, path) -> None:
        with self.canvas.editing():  # no render sees the figure at the page's size
            shown = self.figure.get_size_inches()
            self.figure.set_size_inches(EXPORT_SIZE_IN, forward=False)
            try:
                self.figure.savefig(path, dpi=EXPORT_DPI, format="png")
            finally:
                self.figure.set_size_inches(shown, forward=False)

    def export_csv(self, path) -> Path:
        table = self.table()
        return write_atomic(
            _with_suffix(path, ".csv"), lambda tmp: table.to_csv(tmp, index=False), ".csv"
        )

    def _ask_and_export(self, kind: str, export) -> None:
        suggested = f"{self.image_name or 'prediction'} infection"
        path, _ = QFileDialog.getSaveFileName(self, "Export", suggested, kind)
        if not path:
            return
        try:
            export(path)
        except (OutputNotWritable, OSError, ValueError) as err:
            show_error(f"could not export to {path}: {err}")

    # -- teardown ------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop listening to the viewer and the session (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self.session.results_changed.disconnect(self._on_results)
        self.session.image_renamed.disconnect(self._on_renamed)
        self.session.labels_changed.disconnect(self._on_labels)
        self.viewer.dims.events.current_step.disconnect(self._move_marker)
        self.viewer.layers.events.inserted.disconnect(self._watch_shapes)
        self.viewer.layers.events.removed.disconnect(self._redraw_on)
        self.viewer.layers.selection.events.active.disconnect(self._follow_active)
        for layer in self._watched:
            layer.selected_data.events.items_changed.disconnect(self._on_selection)
        self._watched.clear()

