import numpy as np
import pytest
import torch

from napari_infection_clock.core.preprocess import Preprocessing, preprocess, to_uint8

from .research import research_preprocess


def test_matches_research_steps_on_uint16_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(100, 4000, size=(96, 80), dtype=np.uint16)
    ours = preprocess(torch.from_numpy(frame)[None], Preprocessing(image_size=64))[0].numpy()
    ref = research_preprocess(frame, 64).numpy()
    assert ours.shape == (3, 64, 64)
    # PIL and torchvision antialiased bilinear agree to within one uint8 step.
    assert np.abs(ours - ref).max() <= 1.01 / 255 / 0.25
    assert np.abs(ours - ref).mean() < 0.2 / 255 / 0.25


def test_grayscale_replicated_and_rgb_kept():
    gray = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16)
    x = preprocess(gray, Preprocessing(image_size=16))
    assert x.shape == (1, 3, 16, 16)
    assert torch.equal(x[0, 0], x[0, 2])
    assert x.max() == pytest.approx((1 - 0.5) / 0.25) and x.min() == pytest.approx(-2.0)
    rgb = torch.zeros(1, 16, 16, 3)
    rgb[..., 0] = 10.0
    out = preprocess(rgb, Preprocessing(image_size=16))
    assert out[0, 0].min() == pytest.approx(2.0) and out[0, 1].max() == pytest.approx(-2.0)


def test_uint8_matches_research_truncation_exactly():
    """Per-pixel, before resizing: division then truncation, as numpy's astype does."""
    frame = np.arange(100, 4096, dtype=np.uint16).reshape(1, 1, -1)
    f = frame.astype(np.float64)
    expected = ((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)
    ours = to_uint8(torch.from_numpy(frame.astype(np.int32)))[0, 0].numpy()
    np.testing.assert_array_equal(ours, expected[0])


@pytest.mark.parametrize("value", [0.0, 7.0, float("nan")])
def test_constant_or_nan_frame_gives_zeros_not_nan(value):
    frame = torch.full((2, 8, 8), value)
    x = preprocess(frame, Preprocessing(image_size=16))
    assert torch.isfinite(x).all()
    assert torch.allclose(x, torch.full_like(x, -2.0))  # (0 - 0.5) / 0.25


def test_nan_pixels_count_as_minimum():
    frame = torch.tensor([[[0.0, 1.0], [float("nan"), 2.0]]])
    u8 = to_uint8(frame)
    assert u8[0, 0].tolist() == [[0, 127], [0, 255]]


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match="expected frames"):
        to_uint8(torch.zeros(2, 4, 4, 5))
