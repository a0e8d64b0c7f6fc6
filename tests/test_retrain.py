"""Label -> retrain -> held-out wells: the training widget's code path end to end
(annotation stores -> label table -> block-aware split -> iter_retrain), without Qt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_infection_clock.core.annotations import open_annotations
from napari_infection_clock.core.checkpoint import load_checkpoint
from napari_infection_clock.core.evaluation import predict_items
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.metrics import evaluate_table
from napari_infection_clock.core.model import ModelConfig
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.retrain import (
    iter_retrain,
    labels_of,
    mean_baseline_mae,
    plan_from_labels,
    start_model,
    time_policy_of,
)
from napari_infection_clock.core.synthetic import write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.trainer import TrainConfig


@pytest.mark.slow
def test_labels_from_sample_data_train_a_model_that_generalises(tmp_path):
    root = tmp_path / "data"
    paths = write_research_dataset(root, n_infected=6, n_mock=6, n_frames=40, size=64, seed=11)
    infected = [p for p in paths if p.parent.name == "infected"]
    mock = [p for p in paths if p.parent.name == "uninfected"]
    held_out = infected[:2] + mock[:2]
    stores = []
    for path in infected[2:] + mock[2:]:
        store, sidecar = open_annotations(path, 40, frame_interval_h=0.5)
        if path in infected:
            store.set_condition("infected", onset_h=1.0)
            store.label_frames(range(2, 40), "infected")  # from the onset on
        else:
            store.set_condition("mock")
            store.label_frames(range(40), "uninfected")
        assert store.issues() == []
        store.save(sidecar)
        stores.append(store)

    table = labels_of(stores)
    plan = plan_from_labels(table, val_fraction=0.2)
    assert plan.how.startswith("by well")
    assert not {i.group for i in plan.train} & {i.group for i in plan.val}
    model, meta = start_model("random", ModelConfig(arch="resnet18", hidden_dim=64), 32,
                              time_policy_of(plan))
    # The training dock's default: the best epoch by validation loss, which weighs both
    # heads; by ROC AUC alone an early epoch with an untrained time head can win.
    # 6 epochs: held-out AUC 0.950, MAE 3.27 h against the mean's 4.88 h (8: 0.967, 3.28 h;
    # 4: 0.932, 3.98 h, too close to the bar; measured 1 December).
    config = TrainConfig(epochs=6, batch_size=32, lr=1e-3, seed=0, device="cpu", mode="full",
                         best_metric="loss")
    events = list(iter_retrain(model, meta, plan, config, tmp_path / "model.pt"))
    assert events[-1].stage == "done" and events[-1].best_epoch is not None

    loaded, meta2 = load_checkpoint(tmp_path / "model.pt")
    # calibrated on the validation wells, in the checkpoint and on the final event
    assert meta2.calibration == events[-1].meta.calibration
    assert meta2.calibration["n_validation"] == len(plan.val)
    assert {"temperature", "time_halfwidth_h", "consistent", "novelty"} <= set(meta2.calibration)
    test_items = [i for i in research_items(root, FramePolicy()) if i.stack in map(str, held_out)]
    predictor = Predictor(loaded, meta2, device="cpu", batch_size=64, precision="fp32")
    result = pd.concat(predict_items(predictor, test_items), ignore_index=True)
    metrics = evaluate_table(result)["overall"]
    truth = result.true_time_h.to_numpy()
    print(f"held-out AUC {metrics['classification']['roc_auc']:.4f}, MAE "
          f"{metrics['regression']['mae']:.2f} h vs mean baseline {mean_baseline_mae(truth):.2f} h")
    assert metrics["classification"]["roc_auc"] > 0.9
    assert metrics["regression"]["mae"] < mean_baseline_mae(truth)
    assert np.isfinite(metrics["regression"]["mae"])


def test_calibration_after_training_reports_progress_and_stops(tmp_path):
    """The pass over the validation wells after the last epoch shows progress per frame and
    honours Stop: the run ends "stopped" and the checkpoint stays the uncalibrated best."""
    paths = write_research_dataset(tmp_path / "data", n_infected=2, n_mock=2, n_frames=6,
                                   size=32, seed=3)
    stores = []
    for path in paths:
        store, _ = open_annotations(path, 6, frame_interval_h=0.5)
        infected = path.parent.name == "infected"
        store.set_condition("infected" if infected else "mock", onset_h=1.0 if infected else None)
        store.label_frames(range(6), "infected" if infected else "uninfected")
        stores.append(store)
    table = labels_of(stores)
    plan = plan_from_labels(table, val_fraction=0.5)
    assert plan.val
    model, meta = start_model("random", ModelConfig(arch="resnet18", hidden_dim=16), 32,
                              time_policy_of(plan))
    config = TrainConfig(epochs=1, batch_size=8, seed=0, device="cpu", mode="full")
    seen = []

    def stop() -> bool:
        return any(e.stage == "calibrating" for e in seen)

    for event in iter_retrain(model, meta, plan, config, tmp_path / "model.pt", should_stop=stop):
        seen.append(event)
    calibrating = [e for e in seen if e.stage == "calibrating"]
    frames = len({(i.stack, i.channel, i.frame) for i in plan.val})
    assert [(e.batch, e.batches) for e in calibrating] == [(1, frames)]
    assert seen[-1].stage == "stopped" and seen[-1].best_epoch == 1
    assert "n_validation" not in load_checkpoint(tmp_path / "model.pt")[1].calibration


def test_a_model_trained_from_the_session_model_does_not_keep_its_calibration():
    config = ModelConfig(arch="resnet18", hidden_dim=8)
    time = TimePolicy(frame_interval_h=0.5, onset_h=1.0)
    model, meta = start_model("random", config, 32, time)
    meta.calibration = {"temperature": 3.0, "novelty": {"threshold": 2.0}}
    _, new_meta = start_model("session model", config, 32, time, current=(model, meta))
    assert new_meta.calibration == {}  # until the new model is calibrated on its own
    assert meta.calibration["temperature"] == 3.0  # the session's model keeps its own


def test_an_empty_label_table_says_which_table_and_what_to_do(tmp_path):
    """Issue 11 item 7: from Python, plan_from_labels said "no labels yet: label some frames"
    for a header-only CSV: it names the file and the rows it needs."""
    from napari_infection_clock.core.labels import read_label_table
    from napari_infection_clock.core.trainer import TrainingError

    path = tmp_path / "labels.csv"
    path.write_text("stack,frame,label\n")
    with pytest.raises(TrainingError) as read:
        plan_from_labels(read_label_table(path))
    assert f"label table {path} has no rows" in str(read.value)
    assert "stack, frame, label" in str(read.value), read.value
    with pytest.raises(TrainingError) as given:
        plan_from_labels(pd.DataFrame(columns=["stack", "frame", "label"]))
    assert "stack, frame, label" in str(given.value) and "annotation dock" in str(given.value)
