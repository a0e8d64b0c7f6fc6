"""napari writer: a prediction table as CSV, the one a prediction's tiles layer keeps in its
metadata, or the features of any Shapes or Points layer that has the result columns.

The file holds the core's :data:`..core.results.RESULT_COLUMNS` first, then any other
feature columns, and is written atomically so an existing file is never left half-written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.atomic import write_atomic
from ..core.results import RESULT_COLUMNS
from .layer_roles import PREDICTION_TABLE


def write_prediction_csv(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer; returns the written path, or [] when the layer holds no table."""
    table = attributes.get("metadata", {}).get(PREDICTION_TABLE)
    if table is None:
        table = attributes.get("features")
    table = pd.DataFrame(table) if table is not None else pd.DataFrame()
    if table.empty or not set(RESULT_COLUMNS) <= set(table.columns):
        return []
    return [str(write_table_csv(path, table))]


def write_table_csv(path, table: pd.DataFrame) -> Path:
    """Write ``table`` with the result columns first, atomically."""
    ordered = [c for c in RESULT_COLUMNS if c in table.columns]
    ordered += [c for c in table.columns if c not in ordered]
    return write_atomic(path, lambda tmp: table[ordered].to_csv(tmp, index=False), suffix=".csv")
