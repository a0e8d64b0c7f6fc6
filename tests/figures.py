"""What a person sees on a drawn matplotlib figure: data points hidden under a legend."""

from __future__ import annotations

import numpy as np


def points_under_legends(figure) -> int:
    """How many data points (lines' vertices, scatter offsets) lie under any legend."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    legends += list(figure.legends)
    boxes = [legend.get_window_extent(renderer) for legend in legends]
    hidden = 0
    for ax in figure.axes:
        xy = [line.get_xydata() for line in ax.lines if len(line.get_xdata())]
        xy += [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
        for data in xy:
            data = np.asarray(data, float)
            data = data[np.isfinite(data).all(axis=1)]
            if not len(data):
                continue
            shown = ax.transData.transform(data)
            inside_axes = _inside(ax.get_window_extent(renderer), shown)
            for box in boxes:
                hidden += int((_inside(box, shown) & inside_axes).sum())
    return hidden


def _inside(box, points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)
