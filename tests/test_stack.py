from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile

from napari_infection_clock.core.stack import (
    FrameIndexError,
    StackError,
    TimelapseStack,
    open_stack,
    parse_position,
    stack_from_array,
    write_stack,
)
from napari_infection_clock.core.targets import DEFAULT_FRAME_INTERVAL_H

from .fiji import write_with_unknown_tag_type


def ramp(shape, dtype=np.uint16):
    return (np.arange(np.prod(shape)) % 4000).reshape(shape).astype(dtype)


def test_imagej_tyx_reads_finterval_in_hours(tmp_path):
    data = ramp((6, 10, 12))
    path = tmp_path / "well_p3_t0-5.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX", "finterval": 600})
    with open_stack(path) as stack:
        assert stack.name == "well_p3_t0-5"
        assert (stack.axes, stack.n_frames, stack.frame_shape) == ("TYX", 6, (10, 12))
        assert stack.dtype == np.uint16
        assert stack.frame_interval_h == pytest.approx(600 / 3600)
        assert stack.frame_interval_source == "metadata"
        assert not stack.is_rgb
        np.testing.assert_array_equal(stack.frame(4), data[4])
        np.testing.assert_array_equal(stack.frames([5, 0]), data[[5, 0]])


def test_imagej_time_unit_is_honoured(tmp_path):
    path = tmp_path / "minutes.tif"
    metadata = {"axes": "TYX", "finterval": 30, "tunit": "min"}
    tifffile.imwrite(path, ramp((3, 4, 4)), imagej=True, metadata=metadata)
    with open_stack(path) as stack:
        assert stack.frame_interval_h == pytest.approx(0.5)


def test_ome_time_increment_in_minutes(tmp_path):
    data = ramp((4, 8, 8), np.float32)
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(
        path, data, ome=True,
        metadata={"axes": "TYX", "TimeIncrement": 15, "TimeIncrementUnit": "min"},
    )
    with open_stack(path) as stack:
        assert stack.frame_interval_h == pytest.approx(0.25)
        assert stack.frame_interval_source == "metadata"
        np.testing.assert_array_equal(stack.frame(3), data[3])


def test_ome_plane_delta_t(tmp_path):
    path = tmp_path / "planes.ome.tif"
    planes = {"DeltaT": [0.0, 7200.0, 14400.0], "DeltaTUnit": ["s"] * 3}
    tifffile.imwrite(path, ramp((3, 8, 8)), ome=True, metadata={"axes": "TYX", "Plane": planes})
    with open_stack(path) as stack:
        assert stack.frame_interval_h == pytest.approx(2.0)


def test_plain_multipage_uses_default_interval_and_user_override(tmp_path):
    data = ramp((5, 8, 9))
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data)
    with open_stack(path) as stack:
        assert (stack.n_frames, stack.frame_shape) == (5, (8, 9))
        assert stack.frame_interval_h == DEFAULT_FRAME_INTERVAL_H
        assert stack.frame_interval_source == "default"
        np.testing.assert_array_equal(stack.frame(2), data[2])
    with open_stack(path, frame_interval_h=0.25, start_offset_h=1.0) as stack:
        assert (stack.frame_interval_h, stack.frame_interval_source) == (0.25, "user")
        assert stack.hours(4) == pytest.approx(2.0)
        np.testing.assert_allclose(stack.hours(np.array([0, 2])), [1.0, 1.5])


def test_user_interval_overrides_metadata_and_must_be_positive(tmp_path):
    path = write_stack(tmp_path / "a.tif", ramp((3, 4, 4)), frame_interval_h=2.0)
    with open_stack(path, frame_interval_h=1 / 6) as stack:
        assert stack.frame_interval_h == pytest.approx(1 / 6)
        assert stack.frame_interval_source == "user"
    with pytest.raises(StackError, match="positive"):
        open_stack(path, frame_interval_h=0)


def test_single_frame_yx(tmp_path):
    data = ramp((7, 5))
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, data)
    with open_stack(path) as stack:
        assert (stack.axes, stack.n_frames, stack.frame_shape) == ("TYX", 1, (7, 5))
        np.testing.assert_array_equal(stack.frame(0), data)
        assert stack.single_image  # a picture: no ImageJ or OME metadata, no T axis


def test_a_one_frame_fiji_file_is_a_time_lapse_of_one_frame(tmp_path):
    """Fiji writes no frames= line for one frame (nor tifffile with imagej=True): the file
    is still a time-lapse, with its frame interval; the reader opens what this says."""
    data = ramp((7, 5))
    fiji, imagej = tmp_path / "fiji.tif", tmp_path / "imagej.tif"
    tifffile.imwrite(fiji, data, metadata=None,
                     description="ImageJ=1.54f\nunit=micron\nfinterval=900.0\n")
    tifffile.imwrite(imagej, data[None], imagej=True, metadata={"axes": "TYX"})
    for path, interval in ((fiji, 0.25), (imagej, DEFAULT_FRAME_INTERVAL_H)):
        with open_stack(path) as stack:
            assert (stack.n_frames, stack.frame_shape, stack.single_image) == (1, (7, 5), False)
            assert stack.frame_interval_h == pytest.approx(interval)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_rgb_stack_and_rgba_drops_alpha(tmp_path, compression):
    rgb = np.random.default_rng(0).integers(0, 255, (4, 6, 7, 3), dtype=np.uint8)
    path = write_stack(tmp_path / "rgb.tif", rgb, axes="TYXS", compression=compression)
    with open_stack(path) as stack:
        assert stack.is_rgb and stack.axes == "TYXS"
        assert stack.frame(2).shape == (6, 7, 3)
        np.testing.assert_array_equal(stack.frames([1, 3]), rgb[[1, 3]])
    rgba = np.concatenate([rgb, np.full((4, 6, 7, 1), 255, np.uint8)], axis=-1)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", compression=compression)
    with open_stack(path) as stack:
        np.testing.assert_array_equal(stack.frame(1), rgb[1])


def test_planar_rgb_is_returned_samples_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (3, 6, 7, 3), dtype=np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 1), photometric="rgb", planarconfig="separate")
    with open_stack(path) as stack:
        np.testing.assert_array_equal(stack.frame(2), rgb[2])


def test_tcyx_channel_choice_and_out_of_range(tmp_path):
    data = ramp((5, 3, 8, 8))
    path = tmp_path / "tcyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(StackError, match=r"no channel was chosen.*3 channels: 0, 1, 2"):
        open_stack(path)
    with open_stack(path, channel=0) as stack:
        assert (stack.channel, stack.n_channels, stack.n_frames) == (0, 3, 5)
        np.testing.assert_array_equal(stack.frame(1), data[1, 0])
    with open_stack(path, channel=2) as stack:
        np.testing.assert_array_equal(stack.frame(4), data[4, 2])
    with pytest.raises(StackError, match=r"channel 3 does not exist.*3 channels"):
        open_stack(path, channel=3)


def test_explicit_axes_resolve_ambiguous_file(tmp_path):
    data = ramp((2, 5, 8, 8))  # saved channel-first without axes metadata
    path = tmp_path / "ctyx.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(StackError, match="more than one axis could be time"):
        open_stack(path)
    with open_stack(path, axes="CTYX", channel=1) as stack:
        assert (stack.n_frames, stack.channel) == (5, 1)
        np.testing.assert_array_equal(stack.frame(3), data[1, 3])


def test_explicit_axes_contradicting_metadata_need_force(tmp_path):
    data = ramp((4, 6, 6))
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    with open_stack(path, channel=1) as stack:
        assert (stack.n_frames, stack.n_channels) == (1, 4)
    with pytest.raises(StackError, match=r"contradict.*'CYX'.*C axis \(size 4\) would be read as T"):
        open_stack(path, axes="TYX")
    with open_stack(path, axes="TYX", force_axes=True) as stack:
        assert (stack.n_frames, stack.channel) == (4, None)
        np.testing.assert_array_equal(stack.frame(3), data[3])


@pytest.mark.parametrize("axes", ["TY", "TXX", "QYX", "TYXZ", "TYY"])
def test_bad_axes_string(tmp_path, axes):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, ramp((3, 4, 4)))
    with pytest.raises(StackError, match="invalid axes"):
        open_stack(path, axes=axes)


def test_non_tiff_and_missing_files(tmp_path):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("not an image")
    with pytest.raises(StackError, match="cannot read .*notes.tif as a TIFF"):
        open_stack(bogus)
    with pytest.raises(StackError, match="not found"):
        open_stack(tmp_path / "missing.tif")


def test_nan_float_frames_returned_as_stored(tmp_path):
    data = ramp((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    path = write_stack(tmp_path / "nan.tif", data)
    with open_stack(path) as stack:
        frame = stack.frame(1)
        assert frame.dtype == np.float32
        assert np.isnan(frame[2, 3]) and np.isnan(frame).sum() == 1


def test_big_endian_file_gives_native_frames(tmp_path):
    data = ramp((3, 4, 5))
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">", photometric="minisblack")
    with open_stack(path) as stack:
        frame = stack.frame(2)
        assert frame.dtype == np.dtype("=u2")
        np.testing.assert_array_equal(frame, data[2])


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, np.zeros((2, 4, 4), np.complex64), photometric="minisblack")
    with pytest.raises(StackError, match="unsupported pixel type complex64"):
        open_stack(path)
    with pytest.raises(StackError, match="unsupported pixel type bool"):
        stack_from_array(np.zeros((2, 4, 4), bool))


@pytest.mark.parametrize(("compression", "n_frames"), [(None, 200), ("zlib", 60)])
def test_open_and_read_a_frame_never_loads_the_stack(tmp_path, compression, n_frames):
    data = np.broadcast_to(ramp((1, 256, 256)), (n_frames, 256, 256))
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, compression=compression)
    stack_bytes = data.size * 2
    tracemalloc.start()
    try:
        stack = open_stack(path)
        frame = stack.frame(n_frames - 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with stack:
        assert stack.n_frames == n_frames
        np.testing.assert_array_equal(frame, data[-1])
    assert peak < 1_500_000 < stack_bytes / 5


def test_frame_index_out_of_range_and_closed_stack(tmp_path):
    path = write_stack(tmp_path / "s.tif", ramp((3, 4, 4)))
    stack = open_stack(path)
    with pytest.raises(FrameIndexError, match=r"frame 3 is out of range.*0\.\.2"):
        stack.frame(3)
    with pytest.raises(IndexError):
        stack.frame(-1)
    stack.close()
    with pytest.raises(StackError, match="closed"):
        stack.frame(0)


@pytest.mark.parametrize(
    ("name", "position"),
    [
        ("exp1_s5_b2_p7_t0-94_ec.tiff", 7),
        ("/data/infected/A_p12_x.tif", 12),
        ("p7_no_leading_underscore.tif", None),
        ("stack_p_.tif", None),
    ],
)
def test_parse_position(name, position):
    assert parse_position(name) == position


@pytest.mark.parametrize(
    ("dtype", "axes", "shape", "channel", "frame", "expected"),
    [
        (np.uint16, "TYX", (4, 6, 5), None, 1, np.s_[1]),
        (np.float32, "TCYX", (3, 2, 6, 5), 1, 2, np.s_[2, 1]),
        (np.float64, "TYX", (2, 6, 5), None, 1, np.s_[1]),
        (np.uint8, "CTYX", (2, 3, 6, 5), 1, 2, np.s_[1, 2]),
    ],
)
def test_write_stack_round_trip(tmp_path, dtype, axes, shape, channel, frame, expected):
    data = ramp(shape, dtype)
    path = tmp_path / "sub" / "rt.tif"
    assert write_stack(path, data, axes=axes, frame_interval_h=0.75, compression="zlib") == path
    assert [p.name for p in path.parent.iterdir()] == ["rt.tif"]  # no temp file left behind
    with open_stack(path, channel=channel) as stack:
        assert stack.frame_interval_h == pytest.approx(0.75)
        assert stack.frame_interval_source == "metadata"
        assert stack.dtype == dtype
        np.testing.assert_array_equal(stack.frame(frame), data[expected])


def test_write_stack_rejects_bad_input(tmp_path):
    with pytest.raises(StackError, match="invalid axes"):
        write_stack(tmp_path / "x.tif", ramp((3, 4, 4)), axes="YX")
    with pytest.raises(StackError, match="positive"):
        write_stack(tmp_path / "x.tif", ramp((3, 4, 4)), frame_interval_h=-1)
    assert not list(tmp_path.iterdir())


def test_stack_from_array_numpy_and_axes(tmp_path):
    data = ramp((2, 4, 5, 6))
    stack = stack_from_array(data, axes="CTYX", name="layer", frame_interval_h=0.25, channel=1)
    assert isinstance(stack, TimelapseStack)
    assert (stack.name, stack.path, stack.n_frames, stack.frame_shape) == ("layer", None, 4, (5, 6))
    np.testing.assert_array_equal(stack.frame(3), data[1, 3])
    assert stack.hours(2) == pytest.approx(0.5)
    with pytest.raises(StackError, match="invalid axes"):
        stack_from_array(data, axes="TYX")


def test_stack_from_dask_array_reads_only_requested_frame():
    da = pytest.importorskip("dask.array")
    import dask

    computed = []

    def load(block, block_info=None):
        computed.append(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(ramp((8, 6, 6)), chunks=(1, 6, 6)).map_blocks(load, dtype=np.uint16)
    stack = stack_from_array(lazy, axes="TYX")
    assert computed == []
    with dask.config.set(scheduler="synchronous"):
        frame = stack.frame(5)
    assert computed == [5]
    np.testing.assert_array_equal(frame, ramp((8, 6, 6))[5])


def _damaged(tmp_path, name, compression=None, frames=16):
    """A real 16-frame TIFF as tifffile writes it, and its bytes to break."""
    data = np.random.default_rng(0).integers(0, 4000, (frames, 32, 32)).astype(np.uint16)
    path = tmp_path / name
    if compression:
        tifffile.imwrite(path, data, compression=compression)
    else:
        tifffile.imwrite(path, data, imagej=True)
    return path, bytearray(path.read_bytes())


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_refused_not_shortened(tmp_path, compression):
    path, raw = _damaged(tmp_path, "cut.tif", compression)
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(StackError, match=r"cut.tif.*(damaged|cut short).*export it again"):
        open_stack(path)


def test_bogus_imagej_frame_count_is_refused(tmp_path):
    path, raw = _damaged(tmp_path, "bogus.tif")
    path.write_bytes(bytes(raw).replace(b"images=16", b"images=99"))
    with pytest.raises(StackError, match=r"bogus.tif: its ImageJ header says 99 images"):
        open_stack(path)


def test_corrupt_compressed_frame_midway_says_which(tmp_path):
    path, raw = _damaged(tmp_path, "corrupt.tif", "zlib")
    with tifffile.TiffFile(path) as tif:
        start, size = tif.pages[8].dataoffsets[0], tif.pages[8].databytecounts[0]
    raw[start : start + size] = bytes(size)
    path.write_bytes(raw)
    with open_stack(path) as stack:
        stack.frame(7)
        with pytest.raises(StackError, match=r"corrupt.tif: image 8 cannot be read.*damaged"):
            stack.frame(8)


def test_z_planes_beside_time_are_named_not_blamed_on_axes(tmp_path):
    path = tmp_path / "tzc.tif"
    tifffile.imwrite(path, ramp((3, 4, 2, 8, 8)), imagej=True, metadata={"axes": "TZCYX"})
    for axes in (None, "TZCYX"):
        with pytest.raises(StackError, match=r"besides time \(T=3, Z=4.*Z Project") as err:
            open_stack(path, axes=axes)
        assert "pass axes" not in str(err.value)


def test_recoverable_tiff_oddity_opens_with_a_warning(tmp_path):
    """tifffile logs an ERROR for a private tag of an unknown type, skips the tag and reads
    every image: such a file (microscope software writes odd private tags) is not damaged."""
    data = np.random.default_rng(1).integers(0, 4000, (16, 32, 32)).astype(np.uint16)
    path = tmp_path / "odd_tag.tif"
    write_with_unknown_tag_type(path, data)
    with pytest.warns(UserWarning, match=r"odd_tag.tif.*invalid data type 99.*read anyway"):
        stack = open_stack(path)
    with stack:
        assert stack.n_frames == 16
        np.testing.assert_array_equal(stack.frames(range(16)), data)


def test_another_threads_tifffile_error_is_not_this_files(tmp_path, monkeypatch):
    """The handler listens to tifffile's process-wide logger: what another thread's reader
    logs meanwhile is not evidence about this file."""
    import logging
    import threading

    path = tmp_path / "fine.tif"
    tifffile.imwrite(path, np.zeros((16, 32, 32), np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    opened = threading.Event()
    done = threading.Event()

    def other_reader():
        opened.wait(5)
        logging.getLogger("tifffile").error("<tifffile.TiffPages @8> invalid page offset 99")
        done.set()

    thread = threading.Thread(target=other_reader)
    thread.start()
    original = tifffile.TiffFile.__init__

    def slow_open(self, *args, **kwargs):  # the other thread logs while this one opens
        original(self, *args, **kwargs)
        opened.set()
        done.wait(5)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", slow_open)
    with open_stack(path) as stack:
        assert stack.n_frames == 16
    thread.join()
