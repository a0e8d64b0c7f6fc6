import pickle

import numpy as np
import pytest
import torch

from napari_infection_clock.core.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    save_checkpoint,
)
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.stack import stack_from_array
from napari_infection_clock.core.targets import TimePolicy

from .research import (
    ResearchMultitask,
    research_config,
    research_predict,
    save_research_checkpoint,
)


@pytest.mark.parametrize(
    "variant, hidden, cls_conditioning",
    [("model_state", 256, False), ("model_state", 64, True), ("model_state_dict", 0, True)],
)
def test_research_checkpoint_gives_research_outputs(tmp_path, variant, hidden, cls_conditioning):
    torch.manual_seed(3)
    research = ResearchMultitask("resnet18", hidden=hidden, cls_conditioning=cls_conditioning)
    # Non-trivial BatchNorm statistics, so eval-mode loading is really exercised.
    research.train()
    with torch.no_grad():
        research(torch.randn(8, 3, 64, 64))
    config = research_config(
        "resnet18",
        hidden=hidden,
        cls_conditioning=cls_conditioning,
        image_size=64,
        frames_per_hour=4.0,
        onset=2.0,
        clamp=(0, 24),
    )
    path = tmp_path / "research.pth"
    save_research_checkpoint(path, research, config, variant=variant)

    model, meta = load_checkpoint(path)
    assert meta.model.arch == "resnet18"
    assert meta.model.hidden_dim == hidden and meta.model.cls_conditioning == cls_conditioning
    assert meta.time == TimePolicy(frame_interval_h=0.25, onset_h=2.0, clamp=(0.0, 24.0))
    assert meta.preprocessing.image_size == 64
    assert meta.source == f"research:{variant}"

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 60000, size=(3, 80, 96), dtype=np.uint16)
    predictor = Predictor(model, meta, device="cpu", precision="fp32")
    table = predictor.predict_stack(stack_from_array(frames, frame_interval_h=0.25))
    for frame in range(3):
        p_ref, t_ref = research_predict(research, frames[frame], 64, clamp=(0, 24))
        row = table[table.frame == frame].iloc[0]
        assert row.p_infected == pytest.approx(p_ref, abs=2e-3)
        assert row.pred_time_h == pytest.approx(t_ref, abs=2e-2)
        assert row.hours == pytest.approx(frame * 0.25)


def test_own_format_round_trip_keeps_metadata(tmp_path):
    torch.manual_seed(0)
    model = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=32, cls_conditioning=True))
    meta = CheckpointMeta(
        model=model.config,
        preprocessing=Preprocessing(image_size=48),
        time=TimePolicy(frame_interval_h=0.5, onset_h=1.5, clamp=(0.0, 30.0)),
        tile_size=128,
        history=[{"epoch": 1, "train_loss": 0.5}],
    )
    path = save_checkpoint(tmp_path / "model.pt", model, meta)
    loaded, meta2 = load_checkpoint(path)
    assert meta2.to_dict() == meta.to_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_another_architecture_is_refused(tmp_path):
    research = ResearchMultitask("resnet18")
    path = tmp_path / "r18.pth"
    save_research_checkpoint(path, research, research_config("resnet50"))
    with pytest.raises(CheckpointError, match="resnet50.*resnet18"):
        load_checkpoint(path)
    save_research_checkpoint(path, research, research_config("resnet18"))
    with pytest.raises(CheckpointError, match="not the resnet34"):
        load_checkpoint(path, expected_arch="resnet34")


def test_truncated_file_and_non_checkpoint(tmp_path):
    model = MultitaskResNet(ModelConfig(arch="resnet18"))
    good = save_checkpoint(tmp_path / "good.pt", model, CheckpointMeta(model=model.config))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="truncated.pt' is (not|a damaged) a? ?PyTorch"):
        load_checkpoint(truncated)
    for text in ("hello", "epoch,loss\n1,0.5\n", ""):
        (tmp_path / "notes.txt").write_text(text)
        with pytest.raises(CheckpointError, match=r"notes.txt' is (not a PyTorch|empty).*Choose"):
            load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="no model weights"):
        load_checkpoint(other)


class _Arbitrary:
    pass


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "config": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match="_Arbitrary.*not loaded") as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "weights_only=False" not in message and "\x1b" not in message


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    model = MultitaskResNet(ModelConfig(arch="resnet18"))
    path = save_checkpoint(tmp_path / "model.pt", model, CheckpointMeta(model=model.config))
    before = path.read_bytes()
    # A function cannot be pickled, so this save fails part-way through writing.
    broken = CheckpointMeta(model=model.config, history=[{"callback": lambda: 0}])
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_checkpoint(path, model, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_research_dropout_zero_keeps_slots_and_p(tmp_path):
    research = ResearchMultitask("resnet18", hidden=32, dropout=0.0)
    path = tmp_path / "p0.pth"
    save_research_checkpoint(path, research, research_config("resnet18", hidden=32, dropout=0.0))
    model, meta = load_checkpoint(path)
    assert meta.model.dropout == 0.0 and meta.model.dropout_slots
    assert isinstance(model.classifier[0], torch.nn.Dropout) and model.classifier[0].p == 0.0


def test_research_file_without_config_lists_what_was_assumed(tmp_path):
    research = ResearchMultitask("resnet18", hidden=16)
    path = tmp_path / "bare.pth"
    torch.save({"model_state_dict": research.state_dict(), "fold": 1}, path)
    _, meta = load_checkpoint(path)
    assert meta.model.hidden_dim == 16
    assert {"onset", "frame interval", "image size", "clamp"} <= set(meta.assumed)
    save_research_checkpoint(path, research, research_config("resnet18", hidden=16))
    assert load_checkpoint(path)[1].assumed == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["data"]["frames"].update(frames_per_hour=0),
        lambda c: c.update(data=None) or c.update(multitask={"clamp_range": [5]}),
        lambda c: c["data"]["transforms"].update(image_size="big"),
    ],
)
def test_unusable_research_config_is_a_checkpoint_error(tmp_path, edit):
    research = ResearchMultitask("resnet18")
    config = research_config("resnet18")
    edit(config)
    path = tmp_path / "odd.pth"
    save_research_checkpoint(path, research, config)
    with pytest.raises(CheckpointError, match="cannot be used"):
        load_checkpoint(path)


@pytest.mark.parametrize("variant", ["model_state", "model_state_dict"])
def test_research_numpy_scalars_load_as_plain_numbers(tmp_path, variant):
    """The research scripts store metrics, epochs and folds as numpy scalars (SPEC 8)."""
    path = tmp_path / "research.pth"
    save_research_checkpoint(path, ResearchMultitask("resnet18", hidden=16),
                             research_config("resnet18", hidden=16), variant=variant)
    _, meta = load_checkpoint(path)
    assert meta.val_metrics == pytest.approx({"roc_auc": 5 / 6, "accuracy": 0.6, "mae": 1.0,
                                              "n_items": 5.0})
    assert all(type(v) is float for v in meta.val_metrics.values())
    assert meta.epoch == (7 if variant == "model_state" else 1) and type(meta.epoch) is int


def test_numpy_allowance_is_scalars_only(tmp_path):
    """Numpy arrays and object scalars are still refused: only numeric scalars are allowed."""
    research = ResearchMultitask("resnet18", hidden=16)
    for extra in (np.zeros(3), np.array(["a"], dtype=object)):
        path = tmp_path / "array.pth"
        torch.save({"model_state": research.state_dict(), "val_metrics": {"x": extra}}, path)
        with pytest.raises(CheckpointError, match="not loaded"):
            load_checkpoint(path)


def _research_file(tmp_path, edit, name="odd.pth"):
    """A research checkpoint of a resnet18 whose weights ``edit`` changes first."""
    research = ResearchMultitask("resnet18", hidden=16)
    edit(research)
    path = tmp_path / name
    save_research_checkpoint(path, research, research_config("resnet18", hidden=16))
    return path


def test_three_class_head_is_a_checkpoint_error(tmp_path):
    path = _research_file(tmp_path, lambda m: setattr(m.classifier, "4", torch.nn.Linear(16, 3)))
    with pytest.raises(CheckpointError, match=r"odd.pth'.*3 classes.*2 \(uninfected, infected\)"):
        load_checkpoint(path)


def test_nan_weights_are_refused(tmp_path):
    def poison(m):
        with torch.no_grad():
            m.backbone.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")

    with pytest.raises(CheckpointError, match=r"odd.pth'.*NaN or infinite.*backbone.layer2.0"):
        load_checkpoint(_research_file(tmp_path, poison))


def test_another_network_names_the_file(tmp_path):
    path = tmp_path / "densenet.pth"
    state = {"features.conv0.weight": torch.zeros(4, 3, 7, 7),
             "classifier.weight": torch.zeros(2, 4)}
    torch.save({"model_state": state, "val_metrics": {"auc": np.float64(0.9)}}, path)
    with pytest.raises(CheckpointError, match=r"'.*densenet.pth' has no ResNet backbone") as err:
        load_checkpoint(path)
    assert "cannot be used" not in str(err.value)
