from __future__ import annotations

import numpy as np
import pytest

from napari_infection_clock.core.tiles import (
    TileSpec,
    crop,
    resized_tiles_note,
    tile_boxes,
    tile_grid_shape,
)


def test_whole_frame_is_one_box():
    boxes, rc = tile_boxes(30, 40, TileSpec())
    assert boxes.tolist() == [[0, 0, 30, 40]]
    assert rc.tolist() == [[0, 0]]
    assert boxes.dtype == np.int64
    assert tile_grid_shape(30, 40, TileSpec()) == (1, 1)


def test_exact_division_row_major():
    boxes, rc = tile_boxes(8, 12, TileSpec(tile_size=4))
    assert tile_grid_shape(8, 12, TileSpec(tile_size=4)) == (2, 3)
    assert boxes.tolist() == [
        [0, 0, 4, 4], [0, 4, 4, 8], [0, 8, 4, 12],
        [4, 0, 8, 4], [4, 4, 8, 8], [4, 8, 8, 12],
    ]
    assert rc.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_overlapping_stride():
    boxes, rc = tile_boxes(4, 8, TileSpec(tile_size=4, stride=2))
    assert boxes[:, 1].tolist() == [0, 2, 4]
    assert (boxes[:, 3] - boxes[:, 1]).tolist() == [4, 4, 4]
    assert rc[:, 1].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("border", "x_starts"),
    [("pad", [0, 4, 8]), ("drop", [0, 4]), ("shift", [0, 4, 6])],
)
def test_borders_when_tiles_do_not_fit(border, x_starts):
    spec = TileSpec(tile_size=4, border=border)
    boxes, _ = tile_boxes(4, 10, spec)
    assert boxes[:, 1].tolist() == x_starts
    assert (boxes[:, 3] - boxes[:, 1] == 4).all()
    assert tile_grid_shape(4, 10, spec) == (1, len(x_starts))


def test_pad_covers_the_frame_and_shift_stays_inside():
    pad, _ = tile_boxes(10, 10, TileSpec(tile_size=4, border="pad"))
    shift, _ = tile_boxes(10, 10, TileSpec(tile_size=4, border="shift"))
    assert pad[:, 2].max() == 12 and pad[:, 3].max() == 12
    assert shift[:, 2].max() == 10 and shift[:, 3].max() == 10
    covered = np.zeros((10, 10), bool)
    for y0, x0, y1, x1 in shift:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


@pytest.mark.parametrize("border", ["pad", "drop", "shift"])
def test_tile_larger_than_frame_is_an_error(border):
    with pytest.raises(ValueError, match=r"larger than the frame \(8 x 20 px\).*whole-frame"):
        tile_boxes(8, 20, TileSpec(tile_size=10, border=border))


@pytest.mark.parametrize(
    "kwargs",
    [{"tile_size": 0}, {"tile_size": -3}, {"tile_size": 4, "stride": 0}, {"stride": 2},
     {"tile_size": 4, "border": "wrap"}, {"tile_size": 2.5}],
)
def test_bad_spec_is_an_error(kwargs):
    with pytest.raises(ValueError):
        TileSpec(**kwargs)


def test_crop_inside_is_exact():
    frame = np.arange(30).reshape(5, 6)
    np.testing.assert_array_equal(crop(frame, (1, 2, 3, 5)), frame[1:3, 2:5])


def test_crop_pads_by_reflection():
    frame = np.arange(9).reshape(3, 3)
    out = crop(frame, (1, 1, 5, 5))
    assert out.shape == (4, 4)
    expected = np.pad(frame, ((0, 2), (0, 2)), mode="reflect")[1:5, 1:5]
    np.testing.assert_array_equal(out, expected)
    # the frame's own pixels are mirrored (not the crop's), without repeating the edge
    assert out[0].tolist() == [4, 5, 4, 3]
    assert out[:, 0].tolist() == [4, 7, 4, 1]


def test_crop_before_the_frame_reflects_too():
    frame = np.arange(16).reshape(4, 4)
    out = crop(frame, (-2, -1, 2, 3))
    expected = np.pad(frame, ((2, 0), (1, 0)), mode="reflect")[0:4, 0:4]
    np.testing.assert_array_equal(out, expected)


def test_crop_multichannel_and_tiny_frame():
    frame = np.arange(12).reshape(2, 2, 3)
    out = crop(frame, (0, 0, 4, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[:, :, 1], np.pad(frame[:, :, 1], 2 * [(0, 2)], "reflect"))
    np.testing.assert_array_equal(out[:2, :2], frame)
    one_pixel = np.array([[7]])
    assert crop(one_pixel, (0, 0, 2, 2)).tolist() == [[7, 7], [7, 7]]


def test_crop_of_padded_tile_boxes_has_tile_shape():
    frame = np.random.default_rng(0).random((10, 7))
    boxes, _ = tile_boxes(10, 7, TileSpec(tile_size=4))
    assert all(crop(frame, b).shape == (4, 4) for b in boxes)


def test_crop_rejects_box_outside_or_bad_frame():
    frame = np.zeros((4, 4))
    with pytest.raises(ValueError, match="outside"):
        crop(frame, (4, 0, 6, 2))
    with pytest.raises(ValueError, match="empty"):
        crop(frame, (2, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        crop(np.zeros((2, 4, 4, 1)), (0, 0, 2, 2))


def test_crop_matches_reflecting_the_whole_frame():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 100, (7, 9))
    padded = np.pad(frame, 6, mode="reflect")
    for _ in range(200):
        y0, x0 = rng.integers(-6, 7), rng.integers(-6, 9)
        y1, x1 = y0 + rng.integers(1, 7), x0 + rng.integers(1, 7)
        if y1 <= 0 or x1 <= 0:
            continue
        expected = padded[y0 + 6 : y1 + 6, x0 + 6 : x1 + 6]
        np.testing.assert_array_equal(crop(frame, (y0, x0, y1, x1)), expected)


def test_resized_tiles_note_speaks_the_docks_and_the_command_lines_words():
    """One wording for the warning that other tiles are resized for a native-tile model:
    the docks name a tile size, the command line its --tile-size option."""
    assert resized_tiles_note(16, 16) == resized_tiles_note(None, 32) == ""
    assert resized_tiles_note(16, None, option="--tile-size") == ""
    dock = resized_tiles_note(16, 32)
    assert "native 16 px tiles: 32 px tiles are resized to 16 px" in dock
    assert "a tile size of 16 uses its tiles" in dock
    cli = resized_tiles_note(24, 16, option="--tile-size")
    assert "native 24 px tiles: --tile-size 16 tiles are resized to 24 px" in cli
    assert "leave --tile-size out to use its tiles" in cli
