import gc
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.device import available_devices, select_device
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing
from napari_infection_clock.core.results import RESULT_COLUMNS
from napari_infection_clock.core.runtime import release_gpu_library_pages
from napari_infection_clock.core.stack import open_stack, stack_from_array, write_stack
from napari_infection_clock.core.targets import TimePolicy, frame_time_policy
from napari_infection_clock.core.tiles import TileSpec


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=16))


@pytest.fixture(scope="module")
def predictor(model):
    meta = CheckpointMeta(
        model=model.config,
        preprocessing=Preprocessing(image_size=32),
        time=TimePolicy(frame_interval_h=0.25, onset_h=2.0, clamp=(0.0, 10.0)),
    )
    return Predictor(model, meta, device="cpu", batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(1).integers(0, 4000, size=(5, 40, 56), dtype=np.uint16)


def test_tiles_table_matches_direct_crops(predictor, frames):
    stack = stack_from_array(frames, frame_interval_h=0.5)
    table = predictor.predict_stack(stack, tiles=TileSpec(tile_size=20, border="pad"))
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert len(table) == 5 * 2 * 3  # 40/20 rows, 56 -> 3 padded columns
    row = table[(table.frame == 3) & (table.tile_row == 1) & (table.tile_col == 2)].iloc[0]
    assert (row.y0, row.x0, row.y1, row.x1) == (20, 40, 40, 60)
    assert row.hours == pytest.approx(1.5)  # the stack's own interval (user-given)
    direct = frames[3, 20:40, 40:56]
    direct = np.pad(direct, [(0, 0), (0, 4)], mode="reflect")
    p, t = predictor.predict_crops(direct[None])
    assert row.p_infected == pytest.approx(p[0], abs=1e-6)
    assert row.pred_time_h == pytest.approx(t[0], abs=1e-5)
    assert ((table.pred_time_h >= 0) & (table.pred_time_h <= 10)).all()


def test_class_time_meaning_and_onset_are_consistent(predictor, frames):
    table = predictor.predict_stack(stack_from_array(frames), tiles=TileSpec(tile_size=20))
    infected = table.pred_class == 1
    assert (table.pred_label[infected] == "infected").all()
    assert (table.time_meaning[infected] == "infection_duration").all()
    assert (table.time_meaning[~infected] == "experiment_time").all()
    np.testing.assert_allclose(
        table.est_onset_h[infected], (table.hours - table.pred_time_h)[infected]
    )
    assert table.est_onset_h[~infected].isna().all()
    assert ((table.p_infected >= 0.5) == infected).all()


def test_first_frame_comes_first_and_stop_is_cooperative(predictor, frames):
    stack = stack_from_array(frames)
    order = [fp.frame for fp in predictor.iter_stack(stack, first_frame=3)]
    assert order == [3, 0, 1, 2, 4]
    seen = []
    for fp in predictor.iter_stack(stack, should_stop=lambda: len(seen) >= 2):
        seen.append(fp.frame)
    assert seen == [0, 1]


def test_regions_replace_the_grid(predictor, frames):
    boxes = np.array([[0, 0, 10, 10], [5, 20, 35, 50]])
    table = predictor.predict_stack(stack_from_array(frames), boxes=boxes, frames=[1])
    assert len(table) == 2
    assert table[["y0", "x0", "y1", "x1"]].to_numpy().tolist() == boxes.tolist()


def test_metadata_interval_wins_over_checkpoint(tmp_path, predictor, frames):
    path = write_stack(tmp_path / "s.tif", frames, frame_interval_h=1.0)
    with open_stack(path) as stack:
        assert frame_time_policy(stack, predictor.meta).frame_interval_h == 1.0
    plain = tmp_path / "plain.tif"
    import tifffile

    tifffile.imwrite(plain, frames, photometric="minisblack")
    with open_stack(plain) as stack:
        assert stack.frame_interval_source == "default"
        assert frame_time_policy(stack, predictor.meta).frame_interval_h == 0.25


def test_bf16_stays_close_to_fp32(model, predictor, frames):
    fast = Predictor(model, predictor.meta, device="cpu", precision="bf16")
    stack = stack_from_array(frames)
    a = predictor.predict_stack(stack)
    b = fast.predict_stack(stack)
    assert np.abs(a.p_infected - b.p_infected).max() <= 0.05
    assert np.abs(a.pred_time_h - b.pred_time_h).max() <= 0.5


def test_device_selection():
    assert select_device("auto").type == available_devices()[0]
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available on this machine"):
            select_device("cuda")


def test_nan_frames_give_finite_outputs(predictor):
    frames = np.full((3, 32, 32), np.nan, dtype=np.float32)
    frames[1, :5] = 3.0
    frames[2, :5] = np.arange(32, dtype=np.float32)
    table = predictor.predict_stack(stack_from_array(frames))
    # NaN pixels count as the frame's minimum: frame 2 has an image, frames 0 (all NaN) and
    # 1 (one value and NaN) none, and are marked so rather than answered
    assert table["no_information"].tolist() == [True, True, False]
    assert np.isfinite(table.loc[2, ["p_infected", "pred_time_h"]].to_numpy(float)).all()
    assert isinstance(table, pd.DataFrame)


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_predictor_leaves_the_callers_model_alone(precision):
    torch.manual_seed(0)
    model = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = CheckpointMeta(model=model.config, preprocessing=Preprocessing(image_size=32))
    predictor = Predictor(model, meta, device="cpu", precision=precision)
    predictor.predict_crops(np.zeros((2, 32, 32), np.uint16) + np.arange(32, dtype=np.uint16))
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and value.is_contiguous()
        assert torch.equal(value, before[key]), key


def test_the_predictor_does_not_keep_the_callers_model(predictor, frames):
    """Only the network that runs is held: a caller that lets go of its model (as
    ``infection-clock predict`` does) frees those weights (issue 14)."""
    torch.manual_seed(0)
    model = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=16))
    alive = weakref.ref(model)
    fast = Predictor(model, predictor.meta, device="cpu")
    del model
    gc.collect()
    assert alive() is None
    table = fast.predict_stack(stack_from_array(frames))
    assert np.isfinite(table[["p_infected", "pred_time_h"]].to_numpy()).all()


def test_a_dropped_predictor_frees_its_network_without_the_cyclic_collector(predictor, frames):
    """A finished run's folded copy goes when its Predictor does, not at the next full
    collection: while a dock is open those are rare (ui/gc_freeze.py), and each re-run
    with a resnet50 kept ~95 MB more."""
    fast = Predictor(_fresh_model(), predictor.meta, device="cpu")
    fast.predict_stack(stack_from_array(frames[:1]))
    copies = [weakref.ref(m) for m in fast.network.modules()]
    gc.disable()
    try:
        del fast
        assert not [ref() for ref in copies if ref() is not None]
    finally:
        gc.enable()


def _fresh_model():
    torch.manual_seed(0)
    return MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=16))


def test_released_gpu_library_pages_come_back_when_used():
    """Released pages of the CUDA libraries are mapped again from the file when touched."""
    before = (torch.cuda.is_available(), torch.backends.cudnn.version())
    release_gpu_library_pages()
    assert (torch.cuda.is_available(), torch.backends.cudnn.version()) == before
    release_gpu_library_pages()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(torch.nn.functional.relu(x), x.clamp_min(0))


def test_crops_without_information_are_marked_not_classified(predictor, frames):
    """Issue 11 item 4: a constant tile, a constant frame and 1x1 frames carry no
    information: the Python API marks them so, with no class, probability or time."""
    data = frames[:3].copy()
    data[1, :20, :20] = 7  # tile (0, 0) of frame 1 is flat
    data[2] = 0  # frame 2 is blank
    table = predictor.predict_stack(stack_from_array(data), tiles=TileSpec(tile_size=20))
    empty = ((table.frame == 1) & (table.tile_row == 0) & (table.tile_col == 0)) | (
        table.frame == 2)
    assert table["no_information"].tolist() == empty.tolist()
    assert (table.pred_label[empty] == "no information").all()
    assert (table.pred_class[empty] == -1).all() and (table.time_meaning[empty] == "none").all()
    assert table.loc[empty, ["p_infected", "pred_time_h", "est_onset_h"]].isna().all().all()
    assert table.loc[~empty, "p_infected"].notna().all()

    tiny = predictor.predict_stack(stack_from_array(np.arange(3, dtype=np.uint16).reshape(3, 1, 1)))
    assert tiny["no_information"].all() and tiny["p_infected"].isna().all()
    assert (tiny.pred_label == "no information").all()
