"""The fast prediction path gives the answers of the plain one (no timings here: see
benchmarks/run_benchmarks.py), streams frames, and bf16 stays within the stated tolerance."""

import copy
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from napari_infection_clock.core import predictor as predictor_module
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint
from napari_infection_clock.core.choices import DEFAULT_BATCH_SIZE
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing, preprocess, to_device
from napari_infection_clock.core.stack import stack_from_array
from napari_infection_clock.core.synthetic import generate_stack, write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.tiles import TileSpec, crop, cut_tiles, tile_boxes
from napari_infection_clock.core.trainer import TrainConfig, run_training

from .research import (
    ResearchMultitask,
    research_config,
    research_predict,
    research_preprocess,
    save_research_checkpoint,
    spread_heads,
    varied_frames,
)

META = CheckpointMeta(model=ModelConfig(arch="resnet18", hidden_dim=16),
                      preprocessing=Preprocessing(image_size=32),
                      time=TimePolicy(frame_interval_h=0.5, onset_h=1.0, clamp=(0.0, 12.0)))


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return MultitaskResNet(META.model).eval()


class CountingFrames:
    """An array-like (T, H, W) that records which frames were read, and can fail on one."""

    def __init__(self, data, fail_at=None):
        self.data, self.fail_at, self.read = data, fail_at, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        if key[0] == self.fail_at:
            raise OSError(f"disk error at frame {key[0]}")
        self.read.append(key[0])
        return self.data[key]


@pytest.mark.parametrize("spec", [TileSpec(16), TileSpec(16, border="drop"), TileSpec(16, border="shift"),
                                  TileSpec(24, stride=10), TileSpec(30, stride=7, border="pad")])
@pytest.mark.parametrize("rgb", [False, True])
def test_gathered_tiles_equal_crop(spec, rgb):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60000, size=(37, 50, 3) if rgb else (37, 50), dtype=np.uint16)
    boxes, _ = tile_boxes(37, 50, spec)
    tiles = cut_tiles(frame, boxes)
    assert tiles.shape == (len(boxes), *crop(frame, boxes[0]).shape)
    for box, tile in zip(boxes, tiles):
        np.testing.assert_array_equal(tile, crop(frame, box))


def test_batches_across_frames_equal_tile_by_tile(random_model):
    frames = np.random.default_rng(1).integers(0, 4000, size=(4, 40, 56), dtype=np.uint16)
    stack = stack_from_array(frames)
    spec = TileSpec(tile_size=20)  # 2 x 3 tiles per frame, the last column padded
    fast = Predictor(random_model, META, device="cpu", batch_size=5, precision="fp32", prefetch=2)
    events = list(fast.iter_stack(stack, tiles=spec, first_frame=2))
    assert [e.frame for e in events] == [2, 0, 1, 3]
    assert [e.done for e in events] == [1, 2, 3, 4] and events[0].total == 4
    boxes, _ = tile_boxes(40, 56, spec)
    for event in events:
        crops = np.stack([crop(frames[event.frame], b) for b in boxes])
        p, t = fast.predict_crops(crops)
        np.testing.assert_allclose(event.table.p_infected, p, atol=1e-5)
        np.testing.assert_allclose(event.table.pred_time_h, t, atol=1e-4)
    unthreaded = Predictor(random_model, META, device="cpu", batch_size=4, precision="fp32", prefetch=0)
    a = fast.predict_stack(stack, tiles=spec)
    b = unthreaded.predict_stack(stack, tiles=spec)
    np.testing.assert_allclose(a.p_infected, b.p_infected, atol=1e-5)


def test_mixed_size_regions_and_whole_frames(random_model):
    frames = np.random.default_rng(2).normal(size=(3, 30, 40)).astype(np.float32)
    fast = Predictor(random_model, META, device="cpu", batch_size=2, precision="fp32")
    regions = np.array([[0, 0, 10, 10], [5, 20, 35, 50], [3, 3, 13, 13]])
    table = fast.predict_stack(stack_from_array(frames), boxes=regions)
    p, t = fast.predict_crops(crop(frames[1], regions[1])[None])
    row = table[(table.frame == 1) & (table.tile_row == 1)].iloc[0]
    assert row.p_infected == pytest.approx(p[0], abs=1e-5)
    whole = fast.predict_stack(stack_from_array(frames))
    p, _ = fast.predict_crops(frames)
    np.testing.assert_allclose(whole.p_infected, p, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        fast.predict_stack(stack_from_array(frames), boxes=[[40, 0, 50, 10]])


def test_prediction_streams_frames(random_model):
    frames = np.random.default_rng(3).integers(0, 255, size=(40, 32, 32), dtype=np.uint8)
    source = CountingFrames(frames)
    fast = Predictor(random_model, META, device="cpu", batch_size=2, precision="fp32", prefetch=2)
    ahead = []
    for event in fast.iter_stack(stack_from_array(source)):
        ahead.append(len(source.read) - event.done)
    # Reading runs ahead by a few batches (the prefetch queue), never by the stack.
    assert max(ahead) <= fast.batch_size * (fast.prefetch + 2)
    assert sorted(source.read) == list(range(40))


def test_read_errors_surface_and_the_reader_thread_ends(random_model):
    frames = np.zeros((6, 32, 32), np.uint8)
    fast = Predictor(random_model, META, device="cpu", batch_size=1, precision="fp32", prefetch=2)
    seen = []
    with pytest.raises(OSError, match="frame 3"):
        for event in fast.iter_stack(stack_from_array(CountingFrames(frames, fail_at=3))):
            seen.append(event.frame)
    assert seen == [0, 1, 2]
    events = fast.iter_stack(stack_from_array(frames))
    next(events)
    events.close()  # a caller that stops listening
    assert not [t for t in threading.enumerate() if t.name == "infection-clock-reader"]


def test_fast_path_runs_a_folded_copy_with_fp32_heads(random_model):
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        fast = Predictor(random_model, META, device="cpu", precision=precision)
        layers = list(fast._forward.modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in layers)  # folded
        assert all(p.dtype == dtype for p in fast.network.backbone.parameters())
        heads = [*fast.network.classifier.parameters(), *fast.network.regressor.parameters()]
        assert all(p.dtype == torch.float32 for p in heads)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in random_model.modules())



def test_folding_leaves_a_model_running_on_another_thread_alone(random_model):
    """Making a predictor (BatchNorm folded) while another run computes, as "Use new model"
    (a refresh prediction) then Rank does: the fold used torch.fx's trace, which patches
    nn.Module.__call__ for the whole process, and the other thread's model calls failed
    ("NameError: module is not installed as a submodule")."""
    other = copy.deepcopy(random_model).eval()
    x = torch.rand(2, 3, 32, 32)
    failures, stop = [], threading.Event()

    def compute() -> None:
        with torch.no_grad():
            while not stop.is_set():
                try:
                    other(x)
                except Exception as exc:  # noqa: BLE001  what the other run would meet
                    failures.append(exc)
                    return

    thread = threading.Thread(target=compute)
    thread.start()
    try:
        for _ in range(5):
            fast = Predictor(random_model, META, device="cpu", precision="fp32")
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast._forward.modules())

FALLBACK = """
import warnings, numpy as np, torch
import torch._inductor.config as inductor
from napari_infection_clock.core.checkpoint import CheckpointMeta, load_checkpoint
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.predictor import Predictor
from napari_infection_clock.core.preprocess import Preprocessing

inductor.cpp.cxx = ("/nonexistent/c++",)  # as on a machine without a C++ compiler
inductor.fx_graph_cache = False
torch.manual_seed(0)
config = ModelConfig(arch="resnet18", hidden_dim=16)
meta = CheckpointMeta(model=config, preprocessing=Preprocessing(image_size=32))
model = MultitaskResNet(config).eval()
crops = np.random.default_rng(5).integers(0, 4000, size=(2, 32, 32), dtype=np.uint16)
compiled = Predictor(model, meta, device="cpu", precision="fp32", compile=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    p, _ = compiled.predict_crops(crops)
    compiled.predict_crops(crops)
messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
assert len(messages) == 1, messages  # later batches skip the failed compile
print(messages[0])
exact = Predictor(model, meta, device="cpu", precision="fp32")
np.testing.assert_allclose(p, exact.predict_crops(crops)[0], atol=1e-6)
"""


def test_compile_failure_falls_back_with_a_warning():
    """Inductor fails at the first call without a C++ compiler; prediction goes on.
    In a fresh process: inductor remembers the compiler it found for the whole process."""
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert "torch.compile failed" in out.stdout and "predicting without it" in out.stdout


def test_defaults_suit_the_device(random_model):
    cpu = Predictor(random_model, META, device="cpu")
    assert cpu.batch_size == DEFAULT_BATCH_SIZE["cpu"]
    spare_core = (torch.get_num_threads() < (os.cpu_count() or 1))
    assert cpu.prefetch == (predictor_module.PREFETCH_BATCHES if spare_core else 0)
    assert Predictor(random_model, META, device="cpu", prefetch=3).prefetch == 3


def test_uint16_travels_as_int16_bits():
    raw = torch.from_numpy(np.array([0, 1, 32767, 32768, 65535], dtype=np.uint16))
    widened = to_device(raw, torch.device("cpu"))
    assert widened.tolist() == [0, 1, 32767, 32768, 65535]


def test_fp32_switch_is_plain_fp32(random_model):
    fast = Predictor(random_model, META, device="cpu", precision="fp32")
    assert fast.amp_dtype is None
    crops = np.random.default_rng(4).integers(0, 4000, size=(3, 40, 40), dtype=np.uint16)
    p, t = fast.predict_crops(crops)
    with torch.no_grad():
        logits, time = random_model(preprocess(torch.from_numpy(crops), META.preprocessing))
    np.testing.assert_allclose(p, torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(t, time.clamp(0, 12).numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained model: random weights are unrealistically sensitive to rounding."""
    root = tmp_path_factory.mktemp("parity")
    write_research_dataset(root, n_infected=3, n_mock=3, n_frames=24, size=64, seed=4)
    prep = Preprocessing(image_size=64)
    torch.manual_seed(0)
    config = ModelConfig(arch="resnet18", hidden_dim=32)
    model = MultitaskResNet(config)
    meta = CheckpointMeta(model=config, preprocessing=prep, time=TimePolicy())
    items = research_items(root, FramePolicy())
    run_training(model, ItemDataset(items, prep), None,
                 TrainConfig(epochs=2, batch_size=16, lr=1e-3, augment=False, device="cpu"), meta)
    return model, meta


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(("device", "precision"), [
    ("cpu", "auto"), ("cpu", "bf16"),
    # pinned uint16 batches sent as int16 bits, preprocessing on the GPU, a reader thread
    pytest.param("cuda", "auto", marks=CUDA), pytest.param("cuda", "fp16", marks=CUDA)])
def test_fast_path_matches_fp32_on_sample_data(trained, device, precision):
    model, meta = trained
    exact = Predictor(model, meta, device="cpu", batch_size=8, precision="fp32")
    fast = Predictor(copy.deepcopy(model), meta, device=device, batch_size=8, precision=precision)
    for infected, seed in ((True, 21), (False, 22)):
        stack = stack_from_array(generate_stack(infected, seed=seed, n_frames=24, size=64))
        a = exact.predict_stack(stack)
        b = fast.predict_stack(stack)
        assert np.abs(a.p_infected - b.p_infected).max() <= 0.02
        assert np.abs(a.pred_time_h - b.pred_time_h).max() <= 0.25
        # Unsaturated outputs, where rounding would show (saturated ones hide it).
        assert a.p_infected.between(0.02, 0.98).any()
        assert a.pred_time_h.between(0.5, 47.5).all()


@pytest.mark.parametrize("cls_conditioning", [False, True])
def test_default_precision_matches_the_research_pipeline_on_resnet50(tmp_path, cls_conditioning):
    """A research-format ResNet50 whose outputs spread over 0-30 h, predicted with the
    defaults, against the research pipeline's own preprocessing and fp32 model (issue 11)."""
    torch.manual_seed(0)
    research = ResearchMultitask("resnet50", cls_conditioning=cls_conditioning)
    research.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        research(torch.randn(8, 3, 64, 64))
    frames = varied_frames()
    spread_heads(research, torch.stack([research_preprocess(f, 64) for f in frames]))
    config = research_config("resnet50", cls_conditioning=cls_conditioning, image_size=64)
    path = tmp_path / "r50.pth"
    save_research_checkpoint(path, research, config)
    reference = np.array([research_predict(research, f, 64) for f in frames])
    assert reference[:, 1].min() < 1 and reference[:, 1].max() > 29  # really spread
    assert reference[:, 0].min() < 0.1 and reference[:, 0].max() > 0.9

    model, meta = load_checkpoint(path)
    stack = stack_from_array(np.stack(frames))
    table = Predictor(model, meta, device="cpu").predict_stack(stack)
    assert np.abs(table.p_infected - reference[:, 0]).max() <= 0.02
    assert np.abs(table.pred_time_h - reference[:, 1]).max() <= 0.25
    # The heads run in fp32 on every path: times are not rounded to bf16 steps.
    bf16 = Predictor(model, meta, device="cpu", precision="bf16").predict_stack(stack)
    times = torch.from_numpy(bf16.pred_time_h.to_numpy(np.float32))
    assert (times.to(torch.bfloat16).float() != times).any()
