"""The synthetic generator: deterministic, and carrying the signals both heads must learn."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_absolute_error, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from napari_infection_clock.core.synthetic import (
    SyntheticWell,
    generate_stack,
    sample_pair,
    write_research_dataset,
)
from napari_infection_clock.core.targets import TimePolicy

ONSET_H = 1.0
HOURS = np.arange(48) * 0.5
SEEDS = range(4)


def _excess(stack):
    """Grey levels above each frame's median (the background, in sparse wells)."""
    flat = stack.reshape(len(stack), -1).astype(np.float64)
    return flat - np.median(flat, axis=1, keepdims=True)


def _bright_fraction(stack, levels=50):
    return (_excess(stack) > levels).mean(axis=1)


def _dark_fraction(stack, levels=20):
    """Area darker than the first frame's background: cell bodies, so density and size."""
    return (stack < np.median(stack[0]) - levels).mean(axis=(1, 2))


def test_same_seed_same_stack_other_seed_other_stack():
    a = generate_stack(True, seed=7, n_frames=6, size=64)
    assert np.array_equal(a, generate_stack(True, seed=7, n_frames=6, size=64))
    assert not np.array_equal(a, generate_stack(True, seed=8, n_frames=6, size=64))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_shape_and_dtype(dtype):
    stack = generate_stack(False, seed=0, n_frames=5, size=48, dtype=dtype)
    assert stack.shape == (5, 48, 48)
    assert stack.dtype == np.dtype(dtype)
    assert stack.std() > 0


def test_same_seed_pair_differs_only_after_onset():
    infected = generate_stack(True, seed=3, n_frames=20, onset_h=2.0)
    mock = generate_stack(False, seed=3, n_frames=20, onset_h=2.0)
    before = HOURS[:20] <= 2.0
    assert np.array_equal(infected[before], mock[before])
    assert not np.array_equal(infected[-1], mock[-1])


def test_well_carries_its_time_policy():
    well = SyntheticWell(infected=True, seed=0, frame_interval_h=0.25, onset_h=2.0)
    assert well.policy.time_target(16, True) == pytest.approx(2.0)
    same = generate_stack(True, seed=0, frame_interval_h=0.25, onset_h=2.0)
    assert np.array_equal(well.render(), same)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_frames": 0}, "n_frames"),
        ({"size": 8}, "size"),
        ({"frame_interval_h": 0}, "frame_interval_h"),
        ({"onset_h": -1}, "onset_h"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_stack(True, seed=0, **kwargs)


def test_bright_cells_separate_infected_from_mock_after_onset():
    late = HOURS >= ONSET_H + 8
    for seed in SEEDS:
        infected = _excess(generate_stack(True, seed=seed, dtype="uint8"))
        mock = _excess(generate_stack(False, seed=seed + 50, dtype="uint8"))
        top_infected, top_mock = (np.percentile(s, 99.5, axis=1) for s in (infected, mock))
        assert top_infected[late].min() > top_mock.max() + 10


def test_infected_brightness_rises_with_time_since_onset():
    after = HOURS > ONSET_H
    for seed in SEEDS:
        bright = _bright_fraction(generate_stack(True, seed=seed, dtype="uint8"))
        assert spearmanr(HOURS[after] - ONSET_H, bright[after])[0] > 0.9


def test_mock_cell_area_grows_with_experiment_time():
    for seed in SEEDS:
        mock = generate_stack(False, seed=seed, dtype="uint8")
        assert spearmanr(HOURS, _dark_fraction(mock))[0] > 0.9
        assert _bright_fraction(mock).max() < 0.002


def _features(stack):
    """Position-free statistics: robust intensity and edge-strength quantiles per frame."""
    frames = stack.astype(np.float64)
    flat = frames.reshape(len(frames), -1)
    median = np.median(flat, axis=1, keepdims=True)
    spread = np.median(np.abs(flat - median), axis=1, keepdims=True) + 1.0
    levels = [0.01, 0.05, 0.25, 0.75, 0.95, 0.99, 0.999]
    intensity = np.quantile((flat - median) / spread, levels, axis=1)
    edges = np.hypot(ndimage.sobel(frames, axis=1), ndimage.sobel(frames, axis=2))
    edge = np.quantile(edges.reshape(len(frames), -1) / spread, [0.5, 0.9, 0.99], axis=1)
    return np.vstack([intensity, edge]).T


def test_both_heads_learnable_on_held_out_wells():
    """Linear models on simple statistics, split by well (never by frame), as SPEC 6 asks."""
    policy = TimePolicy(onset_h=ONSET_H)
    n_wells, n_frames = 16, 48
    infected = np.repeat(np.arange(n_wells) % 2 == 0, n_frames)
    well = np.repeat(np.arange(n_wells), n_frames)
    frame = np.tile(np.arange(n_frames), n_wells)
    features = np.vstack(
        [
            _features(generate_stack(w % 2 == 0, seed=1000 + w, dtype="uint8"))
            for w in range(n_wells)
        ]
    )
    train, test = well < 10, well >= 10
    after_onset = policy.hours(frame) > ONSET_H

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(features[train & after_onset], infected[train & after_onset])
    held_out = test & after_onset
    p_infected = classifier.predict_proba(features[held_out])[:, 1]
    assert roc_auc_score(infected[held_out], p_infected) > 0.9

    duration = policy.time_target(frame, infected)
    fit, check = train & infected, test & infected
    regressor = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(features[fit], duration[fit])
    mae = mean_absolute_error(duration[check], regressor.predict(features[check]))
    baseline = mean_absolute_error(duration[check], np.full(check.sum(), duration[fit].mean()))
    assert mae < 0.5 * baseline


def test_research_dataset_layout_names_interval_and_truth(tmp_path):
    timing = {"n_frames": 4, "frame_interval_h": 0.25, "onset_h": 2.0}
    paths = write_research_dataset(tmp_path, n_infected=2, n_mock=3, size=48, seed=5, **timing)
    assert sorted(p.parent.name for p in paths) == ["infected"] * 2 + ["uninfected"] * 3
    assert all(p.parent.parent == tmp_path and p.suffix == ".tif" for p in paths)
    positions = [int(re.search(r"_p(\d+)_", p.name).group(1)) for p in paths]
    assert len(set(positions)) == len(paths)

    truth = json.loads((tmp_path / "dataset.json").read_text())
    assert {k: truth[k] for k in timing} == timing
    assert truth["seed"] == 5
    for path, entry in zip(paths, truth["wells"]):
        assert (tmp_path / entry["path"]) == path
        assert entry["infected"] == (path.parent.name == "infected")
        with tifffile.TiffFile(path) as tif:
            assert tif.imagej_metadata["finterval"] == pytest.approx(0.25 * 3600)
            assert tif.series[0].axes == "TYX"
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            data = tif.asarray()
        expected = generate_stack(
            entry["infected"], seed=entry["seed"], size=48, dtype=entry["dtype"], **timing
        )
        assert np.array_equal(data, expected)
    assert not list(tmp_path.rglob("*.tmp*"))


def test_research_dataset_needs_a_well(tmp_path):
    with pytest.raises(ValueError, match="at least one well"):
        write_research_dataset(tmp_path, n_infected=0, n_mock=0)


def test_sample_pair_is_one_field_with_and_without_infection():
    pair = sample_pair(n_frames=6, size=64, seed=1)
    assert set(pair) == {"infected", "mock"}
    for name, (stack, meta) in pair.items():
        assert stack.shape == (6, 64, 64)
        assert meta == {"frame_interval_h": 0.5, "onset_h": 1.0, "infected": name == "infected"}
    assert np.array_equal(pair["infected"][0][0], pair["mock"][0][0])


def test_a_shifted_configuration_looks_different_and_bad_knobs_are_refused():
    from napari_infection_clock.core.synthetic import SyntheticWell

    base = SyntheticWell(False, seed=5, n_frames=4, size=64).render().astype(float)
    lit = SyntheticWell(False, seed=5, n_frames=4, size=64, illumination=0.3).render()
    right_minus_left = lit[..., 48:].mean() - lit[..., :16].mean()
    assert right_minus_left > base[..., 48:].mean() - base[..., :16].mean() + 500
    flat = SyntheticWell(False, seed=5, n_frames=4, size=64, contrast=0.3).render()
    assert flat.astype(float).std() < base.std()
    crowded = SyntheticWell(False, seed=5, n_frames=4, size=64, density=2.0).render()
    assert crowded.astype(float).mean() < base.mean()  # more dark cell bodies
    with pytest.raises(ValueError, match="density"):
        SyntheticWell(False, seed=5, density=0)
