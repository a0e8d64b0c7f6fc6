"""Crops without information are marked (not answered) in evaluation and label-next too,
and tables written before the ``no_information`` column existed read back as informative."""

import numpy as np
import pandas as pd
import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.evaluation import predict_items
from napari_infection_clock.core.information import describe_missing, has_information
from napari_infection_clock.core.items import Item
from napari_infection_clock.core.metrics import evaluate_table, metrics_json
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.stack import open_stack, write_stack
from napari_infection_clock.core.synthetic import generate_stack
from napari_infection_clock.core.uncertainty import iter_stack_uncertainty, rank_uncertain
from napari_infection_clock.ui.timeseries import frame_summary


def _well_with_a_blank_frame(tmp_path):
    frames = generate_stack(True, seed=3, n_frames=4, size=32)
    frames[2] = frames[2].max()  # a saturated (constant) frame
    return write_stack(tmp_path / "well.tif", frames)


def _predictor():
    torch.manual_seed(0)
    config = ModelConfig("resnet18", hidden_dim=8)
    meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32))
    return Predictor(build_model(config, init="random"), meta, device="cpu", precision="fp32")


def test_evaluation_marks_a_blank_frame_and_leaves_it_out_of_the_metrics(tmp_path):
    path = _well_with_a_blank_frame(tmp_path)
    items = [Item(str(path), f, None, 1, f * 0.5, f * 0.5, "well") for f in range(4)]
    table = pd.concat(predict_items(_predictor(), items), ignore_index=True)
    assert table["no_information"].tolist() == [False, False, True, False]
    assert np.isnan(table.loc[2, "p_infected"]) and np.isnan(table.loc[2, "pred_time_h"])
    metrics = evaluate_table(table)
    assert metrics["n_no_information"] == 1
    without = {**evaluate_table(table.drop(index=2)), "n_no_information": 1}
    assert metrics_json(metrics) == metrics_json(without)  # (NaN != NaN in a dict)


def test_label_next_does_not_propose_a_blank_frame_first(tmp_path):
    stack = open_stack(_well_with_a_blank_frame(tmp_path))
    for method in ("entropy", "mc_dropout"):
        table = pd.concat(iter_stack_uncertainty(_predictor(), stack, method=method),
                          ignore_index=True)
        assert rank_uncertain(table)["frame"].tolist()[-1] == 2, method


def test_nan_and_inf_count_as_the_minimum():
    crops = np.zeros((3, 8, 8), np.float32)
    crops[0, 0, 0] = np.nan  # NaN is the minimum: still constant
    crops[1, 0, 0] = np.inf
    crops[2, 0, 0] = 1.0
    crops[2, 0, 1] = -np.inf
    assert has_information(crops).tolist() == [False, False, True]


def test_tables_from_before_the_column_read_as_informative():
    old = pd.DataFrame({"frame": [0, 1], "hours": [0.0, 1.0], "p_infected": [0.2, 0.9],
                        "pred_class": [0, 1], "pred_time_h": [0.0, 3.0]})
    new = pd.DataFrame({"frame": [2, 3], "hours": [2.0, 3.0], "p_infected": [np.nan, 0.8],
                        "pred_class": [-1, 1], "pred_time_h": [np.nan, 4.0],
                        "no_information": [True, False]})
    merged = pd.concat([old, new], ignore_index=True)
    assert describe_missing(merged) == "1 of 4 items had no information"
    assert frame_summary(merged)["frame"].tolist() == [0, 1, 3]
