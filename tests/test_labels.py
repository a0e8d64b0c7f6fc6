from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.atomic import OutputNotWritable
from napari_infection_clock.core.labels import (
    LABEL_COLUMNS,
    LabelTableError,
    empty_label_table,
    normalize_labels,
    read_label_table,
    write_label_table,
)


def _table(tmp_path: Path) -> pd.DataFrame:
    inside = tmp_path / "stacks" / "a_p3_t0.tif"
    outside = "/elsewhere/b.tif"
    return pd.DataFrame(
        {
            "stack": [str(inside), outside],
            "frame": [4, 0],
            "y0": [np.nan, 2],
            "x0": [np.nan, 3],
            "y1": [np.nan, 10],
            "x1": [np.nan, 12],
            "label": ["infected", "uninfected"],
            "onset_h": [1.5, np.nan],
            "frame_interval_h": [np.nan, 0.25],
        }
    )


def test_round_trip_writes_relative_paths_and_reads_them_back(tmp_path):
    df = _table(tmp_path)
    out = write_label_table(df, tmp_path / "labels.csv")
    assert out == tmp_path / "labels.csv"
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert tuple(raw.columns) == LABEL_COLUMNS
    assert raw["stack"].tolist() == ["stacks/a_p3_t0.tif", "/elsewhere/b.tif"]
    assert raw.loc[0, "y0"] == "" and raw.loc[1, "y0"] == "2"

    back = read_label_table(out)
    assert back["stack"].tolist() == [str((tmp_path / "stacks/a_p3_t0.tif").resolve()),
                                      "/elsewhere/b.tif"]
    assert back["frame"].tolist() == [4, 0]
    assert back["y0"].isna().tolist() == [True, False]
    assert back.loc[1, ["y0", "x0", "y1", "x1"]].tolist() == [2, 3, 10, 12]
    assert back["label"].tolist() == ["infected", "uninfected"]
    assert back.loc[0, "onset_h"] == 1.5 and np.isnan(back.loc[1, "onset_h"])
    assert np.isnan(back.loc[0, "frame_interval_h"]) and back.loc[1, "frame_interval_h"] == 0.25
    assert not list(tmp_path.glob(".labels.csv*")), "temporary file left behind"


def test_table_moves_with_its_images(tmp_path):
    first = tmp_path / "one"
    write_label_table(_table(first), first / "labels.csv")
    moved = tmp_path / "two"
    first.rename(moved)
    back = read_label_table(moved / "labels.csv")
    assert back.loc[0, "stack"] == str((moved / "stacks/a_p3_t0.tif").resolve())


def test_label_values_are_normalised(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text(
        "stack,frame,label,onset_h\n"
        "a.tif,0,1,2\n"
        "a.tif,1,0,\n"
        "a.tif,2,MOCK,\n"
        "a.tif,3, Infected ,1\n"
        "a.tif,4,Uninfected,\n"
    )
    df = read_label_table(path)
    assert df["label"].tolist() == ["infected", "uninfected", "uninfected", "infected",
                                    "uninfected"]
    assert tuple(df.columns) == LABEL_COLUMNS
    assert df["y0"].isna().all() and df["frame_interval_h"].isna().all()


def test_errors_name_csv_lines_and_problems(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "stack,frame,y0,x0,y1,x1,label,onset_h\n"
        "a.tif,0,,,,,infected,1\n"      # line 2: fine
        "a.tif,1,,,,,sick,\n"           # line 3: bad label
        "a.tif,2,,,,,infected,\n"       # line 4: infected without onset
        "a.tif,3,0,0,5,,mock,\n"        # line 5: half box
        "a.tif,-1,,,,,mock,\n"          # line 6: negative frame
        "a.tif,4,5,0,5,8,mock,\n"       # line 7: empty box
    )
    with pytest.raises(LabelTableError) as err:
        read_label_table(path)
    text = str(err.value)
    assert "5 problem(s)" in text
    assert "CSV line 3): label 'sick'" in text
    assert "CSV line 4): infected row needs onset_h" in text
    assert "CSV line 5): box is incomplete" in text
    assert "CSV line 6): frame must be a whole number >= 0" in text
    assert "CSV line 7): box is empty" in text
    assert "line 2)" not in text


def test_missing_columns_and_missing_file(tmp_path):
    with pytest.raises(LabelTableError, match=r"lacks the column\(s\) \['label'\]"):
        normalize_labels(pd.DataFrame({"stack": ["a.tif"], "frame": [0]}))
    with pytest.raises(LabelTableError, match="does not exist"):
        read_label_table(tmp_path / "nope.csv")


def test_write_validates_and_keeps_old_file(tmp_path):
    path = tmp_path / "labels.csv"
    write_label_table(_table(tmp_path), path)
    before = path.read_text()
    bad = _table(tmp_path)
    bad.loc[0, "onset_h"] = np.nan
    with pytest.raises(LabelTableError, match="row 1 .*onset_h"):
        write_label_table(bad, path)
    assert path.read_text() == before


def test_empty_table_round_trips(tmp_path):
    empty = empty_label_table()
    assert tuple(empty.columns) == LABEL_COLUMNS and len(empty) == 0
    path = write_label_table(empty, tmp_path / "e.csv")
    back = read_label_table(path)
    assert len(back) == 0 and tuple(back.columns) == LABEL_COLUMNS


def test_extra_columns_are_kept(tmp_path):
    df = _table(tmp_path).assign(note=["cells round up", ""])
    back = read_label_table(write_label_table(df, tmp_path / "l.csv"))
    assert back.columns[-1] == "note"
    assert back["note"].tolist() == ["cells round up", ""]


def test_label_tables_from_spreadsheets_read_or_say_why(tmp_path):
    rows = "stack,frame,label,onset_h\nwell.tif,0,infected,1\nwell.tif,1,uninfected,\n"
    semicolon = tmp_path / "semicolon.csv"
    semicolon.write_text(rows.replace(",", ";"))
    assert read_label_table(semicolon)["label"].tolist() == ["infected", "uninfected"]
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(rows.encode("utf-16"))
    with pytest.raises(LabelTableError, match=r"utf16.csv is not UTF-8.*CSV UTF-8"):
        read_label_table(utf16)


def test_no_output_replaces_an_input_label_table(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("stack,frame,label\nwell.tif,0,uninfected\n")
    labels = read_label_table(table)
    with pytest.raises(OutputNotWritable, match="is an input"):
        write_label_table(labels, table)
    assert table.read_text() == "stack,frame,label\nwell.tif,0,uninfected\n"


def test_problems_of_a_csv_name_the_file(tmp_path):
    """Issue 11 item 7: a semicolon CSV with a bad row (and a CSV without a column) said
    "label table has 1 problem(s)" without saying which table."""
    bad_row = tmp_path / "excel.csv"
    bad_row.write_text("stack;frame;label\nwell.tif;0;infected\n")
    with pytest.raises(LabelTableError) as err:
        read_label_table(bad_row)
    assert str(err.value).startswith(f"label table {bad_row} has 1 problem(s)"), err.value
    assert "infected row needs onset_h" in str(err.value)
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("stack,frame\nwell.tif,0\n")
    with pytest.raises(LabelTableError) as err:
        read_label_table(no_label)
    assert str(err.value).startswith(f"label table {no_label} lacks the column(s)"), err.value
