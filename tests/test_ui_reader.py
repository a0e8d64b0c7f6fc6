"""Reader, writer and sample data contributions, through npe2 and a real viewer."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_infection_clock.core.results import RESULT_COLUMNS, result_rows
from napari_infection_clock.core.stack import StackError, write_stack
from napari_infection_clock.ui.reader import get_reader
from napari_infection_clock.ui.writer import write_prediction_csv

from .fiji import write_with_unknown_tag_type
from .fresh_process import run_fresh

PLUGIN = "napari-infection-clock"


@pytest.fixture
def timelapse(tmp_path, rng):
    data = rng.integers(0, 4000, size=(6, 40, 48), dtype=np.uint16)
    return write_stack(tmp_path / "well_p3_.tif", data, axes="TYX", frame_interval_h=0.25), data


def test_reader_is_lazy_and_reads_the_frame_interval(timelapse):
    path, data = timelapse
    reader = get_reader(str(path))
    assert reader is not None
    [(array, kwargs, kind)] = reader(str(path))
    assert kind == "image" and array.shape == data.shape and array.dtype == data.dtype
    assert array.ndim == 3 and array.size == data.size
    np.testing.assert_array_equal(array[4], data[4])
    assert kwargs["metadata"]["frame_interval_h"] == pytest.approx(0.25)
    assert kwargs["metadata"]["frame_interval_source"] == "metadata"
    assert kwargs["axis_labels"] == ("t", "y", "x")
    assert kwargs["contrast_limits"] == (float(data[0].min()), float(data[0].max()))


def test_the_readers_frames_are_read_when_asked_for(tmp_path, rng):
    """A 7.9 MB stack opened and one frame of it shown: a frame's worth of memory, not the
    stack's (napari asks only for the frames the slider reaches)."""
    data = rng.integers(0, 4000, size=(60, 256, 256), dtype=np.uint16)
    path = write_stack(tmp_path / "long.tif", data, axes="TYX")
    tracemalloc.start()
    try:
        [(array, _, _)] = get_reader(str(path))(str(path))
        np.testing.assert_array_equal(array[30], data[30])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < data.nbytes / 3, (peak, data.nbytes)


@pytest.mark.parametrize("key", [
    4, -1, np.int64(2), slice(None), slice(1, 5, 2), slice(None, None, -2), (3, slice(5, 20), 7),
    (slice(0, 3), 10), [5, 0, 5], np.array([True, False] * 3), (Ellipsis, 3), (2, Ellipsis),
    (None, 1), ([0, 2], [1, 3]), (slice(0, 4), [1, 3]), (slice(0, 4), [1, 3], [2, 0]), (),
    Ellipsis, (slice(2, 2),), (slice(None), 7, 9), (None, slice(1, 3), None, 2),
    ([True, False] * 3, slice(0, 2)), np.arange(6 * 40).reshape(6, 40) % 7 == 0,
    (slice(None), np.arange(40 * 48).reshape(40, 48) % 5 == 0), (Ellipsis, np.eye(40, 48, dtype=bool)),
    (True, 0), (np.array(True), 2), (None, True, 0), (Ellipsis, True, 0), (False,), [],
    (None, [0, 1], slice(None), 3), ([[0], [1]], slice(None), 2),
], ids=lambda key: f"{type(key).__name__}{np.shape(key)}" if isinstance(key, np.ndarray)
   else repr(key)[:60])
def test_the_readers_frames_index_as_numpy_does(timelapse, key):
    """napari, the docks and a person's console index a layer's data as a numpy array."""
    path, data = timelapse
    [(array, _, _)] = get_reader(str(path))(str(path))
    got = array[key]
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, data[key])
    assert got.shape == data[key].shape


def test_the_readers_frames_refuse_what_numpy_refuses(timelapse):
    path, data = timelapse
    [(array, _, _)] = get_reader(str(path))(str(path))
    for key in (6, -7, (0, 0, 0, 0), [6], (slice(None), 40), (slice(None), 0, 0, 0),
                (Ellipsis, Ellipsis)):
        with pytest.raises(IndexError):
            data[key]
        with pytest.raises(IndexError):
            array[key]
    np.testing.assert_array_equal(np.asarray(array), data)
    assert np.asarray(array, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="copy"):
        np.asarray(array, copy=False)


def test_a_crop_of_the_readers_frames_keeps_no_whole_frame(tmp_path, rng):
    """A pixel's trace over time, or a crop, is as large as itself: it held every frame it
    was cut from (800 MB for a pixel of a 797 MB stack), which dask's chunks did not; and a
    key that fails on the frames' own axes fails before any frame is read."""
    data = rng.integers(0, 4000, size=(40, 128, 128), dtype=np.uint16)
    path = write_stack(tmp_path / "trace.tif", data, axes="TYX")
    [(array, _, _)] = get_reader(str(path))(str(path))
    for key in ((slice(None), 100, 100), (slice(None), slice(0, 4), slice(0, 4)), (3, 7)):
        part = array[key]
        np.testing.assert_array_equal(part, data[key])
        kept = part if part.base is None else part.base
        assert kept.nbytes <= 2 * part.nbytes, (key, kept.nbytes, part.nbytes)
    tracemalloc.start()
    try:
        with pytest.raises(IndexError):
            array[:, 128]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < data[0].nbytes, peak


def test_a_reader_layer_duplicates_as_napari_duplicates_layers(tmp_path, rng):
    """napari's Duplicate Layer (the layer list's menu) deep-copies the data: it failed on a
    compressed stack (its file handle cannot be copied) and copied the whole memory map of
    an uncompressed one into memory. The frames are read-only: the copy shares them."""
    from napari.components import LayerList
    from napari.layers import Image
    from napari.layers._layer_actions import _duplicate_layer

    data = rng.integers(0, 4000, size=(5, 32, 32), dtype=np.uint16)
    for compression in (None, "zlib"):
        path = tmp_path / f"dup_{compression}.tif"
        tifffile.imwrite(path, data, compression=compression)
        [(array, kwargs, _)] = get_reader(str(path))(str(path))
        layers = LayerList([Image(array, **kwargs)])
        layers.selection.active = layers[0]
        _duplicate_layer(layers)
        assert len(layers) == 2
        np.testing.assert_array_equal(layers[1].data[3], data[3])


def test_reader_splits_channels_and_keeps_rgb(tmp_path, rng):
    two = rng.integers(0, 255, size=(3, 2, 16, 16), dtype=np.uint8)
    path = write_stack(tmp_path / "two.tif", two, axes="TCYX", frame_interval_h=1.0)
    layers = get_reader(str(path))(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["two [ch 0]", "two [ch 1]"]
    np.testing.assert_array_equal(layers[1][0][2], two[2, 1])
    rgb = rng.integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    path = write_stack(tmp_path / "rgb.tif", rgb, axes="TYXS")
    [(array, kwargs, _)] = get_reader(str(path))(str(path))
    assert kwargs["rgb"] and array.shape == (3, 16, 16, 3)


def test_reader_leaves_other_files_alone(tmp_path):
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, np.zeros((16, 16), np.uint8))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (single, broken, text, tmp_path):
        assert get_reader(str(path)) is None, path
    assert get_reader([str(single), str(broken)]) is None


def test_viewer_opens_tiff_and_samples(make_napari_viewer, timelapse):
    viewer = make_napari_viewer()
    path, data = timelapse
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.data.shape == data.shape
    assert layer.metadata["frame_interval_h"] == pytest.approx(0.25)
    for key, infected in (("infected", True), ("mock", False)):
        [sample] = viewer.open_sample(PLUGIN, key)
        assert sample.data.ndim == 3 and sample.data.shape[0] > 10
        assert sample.metadata["infected"] is infected
        assert sample.metadata["frame_interval_h"] == 0.5 and sample.metadata["onset_h"] == 1.0


def test_a_sample_renders_its_own_well_only():
    """File > Open Sample renders a synthetic well on the GUI thread (48 frames of 256 x 256:
    seconds on 2 cores); each entry rendered the infected and the mock well and kept one."""
    import cProfile
    import pstats

    from napari_infection_clock.ui.sample_data import infected_sample, mock_sample

    first = []
    for make, infected in ((infected_sample, True), (mock_sample, False)):
        profile = cProfile.Profile()
        [(data, kwargs, kind)] = profile.runcall(make)
        renders = sum(stat[1] for (path, _, name), stat in pstats.Stats(profile).stats.items()
                      if name == "_render" and path.endswith("synthetic.py"))
        assert renders == 1, renders
        assert kind == "image" and data.shape == (48, 256, 256)
        assert kwargs["metadata"]["infected"] is infected
        first.append(data[0])
    assert np.array_equal(*first)  # still one field, with and without infection


def test_writer_saves_result_features_and_refuses_other_layers(tmp_path):
    boxes = np.array([[0, 0, 32, 32], [0, 32, 32, 64]])
    table = result_rows("well", 3, 1.5, boxes, [[0, 0], [0, 1]], [0.2, 0.9], [1.5, 0.4],
                        frame_shape=(32, 64))
    table["note"] = "extra"
    [written] = write_prediction_csv(str(tmp_path / "p.csv"), None, {"features": table})
    back = pd.read_csv(written)
    assert list(back.columns) == list(RESULT_COLUMNS) + ["note"]
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert (
        write_prediction_csv(str(tmp_path / "q.csv"), None, {"features": pd.DataFrame({"a": [1]})})
        == []
    )
    assert not (tmp_path / "q.csv").exists()


def test_reader_claims_a_truncated_tiff_to_say_what_is_wrong(tmp_path):
    """Other readers accept it and then fail on frame access (or hang); ours says why."""
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.arange(16 * 32 * 32, dtype=np.uint16).reshape(16, 32, 32),
                     imagej=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(StackError, match=r"cut.tif is damaged.*export it again"):
        reader(str(path))


def test_reader_opens_a_file_tifffile_recovers_from(tmp_path):
    """A private tag of an unknown type makes tifffile log an ERROR, yet every image reads:
    the reader opens it (saying what was skipped) instead of calling it damaged."""
    data = np.arange(16 * 32 * 32, dtype=np.uint16).reshape(16, 32, 32)
    path = tmp_path / "odd_tag.tif"
    write_with_unknown_tag_type(path, data)
    with pytest.warns(UserWarning, match="read anyway"):
        reader = get_reader(str(path))
        assert reader is not None
        (layer,) = reader(str(path))
    np.testing.assert_array_equal(np.asarray(layer[0]), data)


def test_a_frame_damaged_midway_shows_blank_with_a_warning_naming_it(tmp_path):
    """Issue 11 item 3: a compressed stack with one corrupt frame opened fine and then
    raised a decompression error on every redraw of that frame; now that frame is shown
    blank, once the file and frame are named (napari shows Python warnings)."""
    frames = np.random.default_rng(0).integers(0, 4000, (8, 32, 32), dtype=np.uint16)
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, frames, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[4].dataoffsets[0], tif.pages[4].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + count - 2] = np.random.default_rng(1).integers(
        0, 256, count - 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    layer = get_reader(str(path))(str(path))[0][0]
    np.testing.assert_array_equal(np.asarray(layer[3]), frames[3])
    with pytest.warns(UserWarning, match=r"corrupt.tif: image 4 cannot be read.*shown blank"):
        blank = np.asarray(layer[4])
    assert blank.shape == (32, 32) and not blank.any()


def test_a_z_stack_opened_with_the_plugins_reader_says_what_to_do(make_napari_viewer,
                                                                   tmp_path):
    """A Fiji TZCYX file with Z planes, opened with the Infection Clock reader: napari said
    only that the reader "refused the file", never why; the reader now says to Z-project
    it (or save one time series per file). napari's own reader still opens it."""
    path = tmp_path / "tzc.tif"
    data = np.arange(3 * 4 * 2 * 8 * 8, dtype=np.uint16).reshape(3, 4, 2, 8, 8)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    viewer = make_napari_viewer()
    with pytest.raises(ValueError) as err:  # napari shows its message as an error
        viewer.open(str(path), plugin="napari-infection-clock")
    assert "Z Project" in str(err.value) and "refused" not in str(err.value), err.value
    assert viewer.layers == []
    viewer.open(str(path), plugin="napari")
    assert viewer.layers[0].data.shape == data.shape


@pytest.mark.parametrize("opening", ["file", "sample"])
def test_opening_a_stack_imports_the_docks_pandas_meanwhile(opening, timelapse):
    """A stack opened (File > Open with the plugin's reader, or File > Open Sample), the
    docks' pandas is imported on a thread while the person looks at it: imported by the
    first dock instead, it was 0.4 s of that dock's opening on the GUI thread. In a fresh
    process, napari first, as a user's; no dock is opened."""
    open_it = (f"viewer.open({str(timelapse[0])!r}, plugin='napari-infection-clock')"
               if opening == "file" else
               "viewer.open_sample('napari-infection-clock', 'infected')")
    code = ("import sys, time, napari; from qtpy.QtWidgets import QApplication; "
            f"viewer = napari.Viewer(show=False); {open_it}; "
            "print('after opening', 'pandas' in sys.modules, flush=True); "
            "end = time.monotonic() + 60\n"
            "while 'pandas' not in sys.modules and time.monotonic() < end:\n"
            "    QApplication.processEvents(); time.sleep(0.05)\n"
            "print('pandas', 'pandas' in sys.modules, 'docks', len(viewer.window.dock_widgets))")
    out = run_fresh(code)
    assert "pandas True docks 0" in out, out


def test_opening_a_stack_imports_no_dask(timelapse):
    """File > Open with the plugin's reader, and the slider moved: the reader's frames were
    dask's, whose delayed reads hashed the whole file once per frame (51 s of File > Open
    for a 797 MB stack, benchmarks/open_stack.py), and importing dask.array was 0.48 s more.
    In a fresh process, napari first, as a user's."""
    code = ("import sys, napari; from qtpy.QtWidgets import QApplication; "
            "viewer = napari.Viewer(show=False); "
            f"[layer] = viewer.open({str(timelapse[0])!r}, plugin='napari-infection-clock'); "
            "viewer.dims.set_current_step(0, 4); QApplication.processEvents(); "
            "print('dask.array', 'dask.array' in sys.modules, 'shown', layer._slice.image.view.shape)")
    out = run_fresh(code)
    assert "dask.array False shown (40, 48)" in out, out
