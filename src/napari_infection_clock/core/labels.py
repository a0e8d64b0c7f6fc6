"""The label table: what the annotation widget writes and the trainer reads.

One row labels one frame of one TIFF stack, or one box of it. Columns are defined here
only (:data:`LABEL_COLUMNS`); reading and writing validate the same way, so a table that
was written can always be read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import mark_input, write_atomic
from .targets import CLASS_NAMES

LABEL_COLUMNS = (
    "stack",
    "frame",
    "y0",
    "x0",
    "y1",
    "x1",
    "label",
    "onset_h",
    "frame_interval_h",
    "channel",
)
BOX_COLUMNS = ("y0", "x0", "y1", "x1")
REQUIRED_COLUMNS = ("stack", "frame", "label")
LABEL_VALUES = CLASS_NAMES

_LABEL_ALIASES = {
    "1": "infected",
    "1.0": "infected",
    "infected": "infected",
    "0": "uninfected",
    "0.0": "uninfected",
    "uninfected": "uninfected",
    "mock": "uninfected",
}
_MAX_REPORTED = 20


class LabelTableError(ValueError):
    """A label table that cannot be used; the message lists the rows and problems."""


def empty_label_table() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in LABEL_COLUMNS}))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["stack"] = out["stack"].astype(object)
    out["frame"] = out["frame"].astype(np.int64)
    for c in BOX_COLUMNS:
        out[c] = out[c].astype("Int64")
    out["label"] = out["label"].astype(object)
    for c in ("onset_h", "frame_interval_h"):
        out[c] = out[c].astype(np.float64)
    out["channel"] = out["channel"].astype(object)
    return out


def _given(series: pd.Series) -> pd.Series:
    """True where a cell holds something (not NaN/NA, not blank text)."""
    return ~(series.isna() | (series.astype(str).str.strip() == ""))


def _numbers(series: pd.Series) -> pd.Series:
    """Numeric values; blanks and non-numbers become NaN (the caller flags the latter)."""
    stripped = series.map(lambda v: v.strip() if isinstance(v, str) else v)
    return pd.to_numeric(stripped, errors="coerce").astype(np.float64)


def normalize_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Validate a label table and return it with normalised values and dtypes.

    Labels 1/0, infected/uninfected/mock (any case) become "infected"/"uninfected"; the
    box columns are all-or-nothing per row; infected rows need an onset; ``channel`` (for
    multichannel stacks) is an index or a channel name, None where empty. Extra columns
    are kept after the standard ones. Raises :class:`LabelTableError` naming every bad row.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LabelTableError(
            f"label table lacks the column(s) {missing}; it needs at least "
            f"{list(REQUIRED_COLUMNS)} and may have {list(LABEL_COLUMNS)}"
        )
    df = df.reset_index(drop=True)
    blank = pd.Series(np.nan, index=df.index)
    raw = {c: df[c] if c in df.columns else blank for c in LABEL_COLUMNS}
    problems: list[tuple[int, str]] = []

    def flag(mask, message):
        problems.extend((int(i), message) for i in np.flatnonzero(np.asarray(mask)))

    stack = raw["stack"]
    flag(~_given(stack), "stack path is empty")

    frame = _numbers(raw["frame"])
    flag(frame.isna(), "frame is missing or not a number")
    flag(frame.notna() & ((frame < 0) | (frame % 1 != 0)), "frame must be a whole number >= 0")

    label = raw["label"].astype(str).str.strip().str.lower().map(_LABEL_ALIASES)
    for i in np.flatnonzero(label.isna().to_numpy()):
        problems.append(
            (int(i), f"label {raw['label'].iloc[i]!r} is not infected/uninfected/mock/1/0")
        )

    box = pd.DataFrame({c: _numbers(raw[c]) for c in BOX_COLUMNS})
    box_given = pd.DataFrame({c: _given(raw[c]) for c in BOX_COLUMNS})
    partial = box_given.any(axis=1) & ~box_given.all(axis=1)
    flag(partial, "box is incomplete: give all of y0, x0, y1, x1 or none of them")
    not_whole = (box_given & (box.isna() | (box % 1 != 0))).any(axis=1)
    flag(not_whole, "box coordinates must be whole numbers")
    full = box_given.all(axis=1) & ~not_whole
    flag(full & ((box["y0"] < 0) | (box["x0"] < 0)), "box y0 and x0 must be >= 0")
    flag(
        full & ((box["y1"] <= box["y0"]) | (box["x1"] <= box["x0"])),
        "box is empty: it needs y1 > y0 and x1 > x0",
    )

    onset = _numbers(raw["onset_h"])
    onset_given = _given(raw["onset_h"])
    flag(onset_given & ~np.isfinite(onset.fillna(np.inf)), "onset_h is not a number")
    flag((label == "infected") & ~onset_given, "infected row needs onset_h (hours)")

    interval = _numbers(raw["frame_interval_h"])
    flag(
        _given(raw["frame_interval_h"]) & ~(np.isfinite(interval) & (interval > 0)),
        "frame_interval_h must be a positive number of hours (or empty)",
    )

    channel = raw["channel"].map(_channel_cell)
    flag(channel.map(lambda c: isinstance(c, int) and c < 0), "channel must be >= 0 or a name")
    flag(channel.map(lambda c: isinstance(c, float)), "channel must be a whole number or a name")

    if problems:
        problems.sort()
        lines = [f"row {i + 1} (CSV line {i + 2}): {msg}" for i, msg in problems]
        more = len(lines) - _MAX_REPORTED
        text = "\n".join(lines[:_MAX_REPORTED]) + (f"\n... and {more} more" if more > 0 else "")
        raise LabelTableError(f"label table has {len(problems)} problem(s):\n{text}")

    out = pd.DataFrame(
        {
            "stack": stack.astype(str).str.strip(),
            "frame": frame,
            **{c: box[c] for c in BOX_COLUMNS},
            "label": label,
            "onset_h": onset,
            "frame_interval_h": interval,
            "channel": channel,
        }
    )
    out = _typed(out)
    extra = [c for c in df.columns if c not in LABEL_COLUMNS]
    return pd.concat([out, df[extra]], axis=1) if extra else out


def _channel_cell(value):
    """A channel cell: None (empty), an index (int) or a name (str); floats are flagged."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def read_label_table(path) -> pd.DataFrame:
    """Read and validate a label-table CSV; relative stack paths become absolute,
    resolved against the table's folder (so a table travels with its images)."""
    path = Path(path)
    if not path.is_file():
        raise LabelTableError(f"label table {path} does not exist; choose an existing CSV file")
    mark_input(path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            header = fh.readline()
        # Spreadsheets in many locales write ';' (or tabs) between columns.
        sep = next((s for s in (",", ";", "\t") if s in header), ",")
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabelTableError(
            f"label table {path} is not UTF-8 text (saved as UTF-16 or another encoding?); "
            "save it again as 'CSV UTF-8' and retry"
        ) from None
    except pd.errors.EmptyDataError:
        raise LabelTableError(
            f"label table {path} is empty; it needs a header row with {list(LABEL_COLUMNS)}"
        ) from None
    try:
        df = normalize_labels(df)
    except LabelTableError as exc:  # say which table
        raise LabelTableError(str(exc).replace("label table", f"label table {path}", 1)) from None
    folder = path.resolve().parent
    df["stack"] = [
        s if Path(s).is_absolute() else str((folder / s).resolve()) for s in df["stack"]
    ]
    df.attrs["table_folder"] = str(folder)  # for messages about stacks that are not there
    df.attrs["path"] = str(path)  # and about the table itself
    return df


def write_label_table(df: pd.DataFrame, path) -> Path:
    """Validate and write atomically (temp file + rename), so a crash never leaves half a
    table. Stack paths inside the table's folder are written relative to it."""
    path = Path(path)
    out = normalize_labels(df)
    folder = path.resolve().parent
    out["stack"] = [_relative_if_inside(s, folder) for s in out["stack"]]
    return write_atomic(path, lambda tmp: out.to_csv(tmp, index=False), suffix=".csv")


def _relative_if_inside(stack: str, folder: Path) -> str:
    p = Path(stack)
    if not p.is_absolute():
        return p.as_posix()
    resolved = p.resolve()
    return resolved.relative_to(folder).as_posix() if resolved.is_relative_to(folder) else stack
