"""Out-of-distribution items: flagged from the crops themselves, and not answered with confidence."""

import numpy as np
import pandas as pd

from napari_infection_clock.core.calibration import finish_table
from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.evaluation import predict_items
from napari_infection_clock.core.items import Item
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.novelty import add_novelty, crop_statistics, fit_novelty
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.results import result_rows
from napari_infection_clock.core.stack import stack_from_array, write_stack
from napari_infection_clock.core.synthetic import generate_stack


def stats_of(frames):
    return np.stack([crop_statistics(f) for f in frames])


def fluorescence_like(rng, size=64):
    """Another modality: a dark field with a few bright blobs."""
    y, x = np.mgrid[:size, :size]
    img = rng.normal(100, 5, (size, size))
    for cy, cx in rng.uniform(0, size, (6, 2)):
        img += 3000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 8.0)
    return img.astype(np.uint16)


def test_constant_saturated_and_other_modality_are_flagged_our_wells_are_not():
    rng = np.random.default_rng(0)
    train = [generate_stack(i % 2 == 0, seed=i, n_frames=12, size=64) for i in range(4)]
    val = [generate_stack(i % 2 == 0, seed=10 + i, n_frames=12, size=64) for i in range(2)]
    model = fit_novelty(stats_of(np.concatenate(train)), stats_of(np.concatenate(val)))
    unseen = np.concatenate([generate_stack(i % 2 == 0, seed=20 + i, n_frames=12, size=64)
                             for i in range(2)])
    frames = [np.zeros((64, 64), np.uint16),  # constant: no information
              np.minimum(unseen[5], np.percentile(unseen[5], 20)),  # saturated
              fluorescence_like(rng)]  # another modality
    test = np.concatenate([unseen, np.stack(frames)])
    stack = stack_from_array(test, name="mixed", frame_interval_h=0.5)
    table = pd.concat([result_rows("mixed", f, f * 0.5, [(0, 0, 64, 64)], [(0, 0)], [0.97], [3.0])
                       for f in range(len(test))], ignore_index=True)
    flagged = add_novelty(table, stack, model)["out_of_distribution"].to_numpy()
    assert flagged[-3:].all()
    assert flagged[:-3].mean() <= 0.1  # our own kind of well, unseen seeds


def test_flagged_items_get_no_confident_answer_and_no_vote():
    hours = np.arange(20) * 0.5
    frames = np.stack([generate_stack(True, seed=3, n_frames=20, size=48)[i] for i in range(20)])
    frames[7] = 0  # a dropped frame
    stack = stack_from_array(frames, name="well", frame_interval_h=0.5)
    durations = np.maximum(hours - 1.0, 0)
    durations[7] = 40.0  # what the network says to a blank frame, with p = 0.99
    table = pd.concat([result_rows("well", f, hours[f], [(0, 0, 48, 48)], [(0, 0)], [0.99],
                                   [durations[f]]) for f in range(20)], ignore_index=True)
    ref = stats_of(frames[np.arange(20) != 7])
    calibration = {"temperature": 2.0, "level": 0.9, "novelty": fit_novelty(ref, ref),
                   "time_halfwidth_h": {"infected": 1.0, "uninfected": 1.0},
                   "consistent_halfwidth_h": {"infected": 0.5, "uninfected": 0.5}}
    out = finish_table(table, CheckpointMeta(calibration=calibration), stack)
    row = out.iloc[7]
    assert row.out_of_distribution and np.isinf(row.novelty)
    assert np.isnan(row.p_calibrated) and np.isnan(row.time_low_h) and np.isnan(row.consistent_high_h)
    assert out.drop(index=7)["p_calibrated"].notna().all()
    assert out["onset_h"].iloc[0] == 1.0  # the blank frame's 40 h did not vote


def test_constant_frames_are_flagged_without_a_novelty_model(tmp_path):
    """Research checkpoints and models trained without validation have no novelty model;
    a blank frame (or a 1x1 one) still gets no confident answer, in predict and evaluate."""
    frames = generate_stack(True, seed=3, n_frames=4, size=32)
    frames[2] = 0  # a dropped frame
    stack = stack_from_array(frames, name="well", frame_interval_h=0.5)
    table = pd.concat([result_rows("well", f, f * 0.5, [(0, 0, 32, 32), (0, 0, 1, 1)],
                                   [(0, 0), (0, 1)], [0.99, 0.99], [1.0, 1.0]) for f in range(4)],
                      ignore_index=True)
    out = finish_table(table, CheckpointMeta(), stack)
    assert out["out_of_distribution"].tolist() == [False, True] * 2 + [True, True] + [False, True]

    path = write_stack(tmp_path / "well.tif", frames)
    items = [Item(str(path), f, None, 1, f * 0.5, f * 0.5, "well") for f in range(4)]
    config = ModelConfig("resnet18", hidden_dim=8)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32))
    predictor = Predictor(build_model(config, init="random"), meta, device="cpu", precision="fp32")
    evaluated = finish_table(pd.concat(predict_items(predictor, items), ignore_index=True), meta)
    assert evaluated["out_of_distribution"].tolist() == [False, False, True, False]
