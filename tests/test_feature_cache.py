"""The feature cache: hits on repeat, and misses whenever image, tiles or backbone change."""

import os

import pytest
import tifffile
import torch

from napari_infection_clock.core.checkpoint import CheckpointMeta
from napari_infection_clock.core.dataset import ItemDataset
from napari_infection_clock.core.feature_cache import FeatureCache, backbone_digest
from napari_infection_clock.core.items import FramePolicy, research_items
from napari_infection_clock.core.model import ModelConfig, MultitaskResNet
from napari_infection_clock.core.preprocess import Preprocessing, preprocess
from napari_infection_clock.core.runtime import prediction_dtype
from napari_infection_clock.core.stack import open_stack, stack_from_array
from napari_infection_clock.core.synthetic import generate_stack, write_research_dataset
from napari_infection_clock.core.targets import TimePolicy
from napari_infection_clock.core.tiles import TileSpec
from napari_infection_clock.core.trainer import TrainConfig, iter_train

PREP = Preprocessing(image_size=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_research_dataset(root, n_infected=2, n_mock=2, n_frames=6, size=64, seed=3)
    return root


def _items(root, tile=32):
    return research_items(root, FramePolicy(frames_per_hour=2.0), tiles=TileSpec(tile_size=tile))


def _model():
    torch.manual_seed(0)
    return MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=16)).eval()


def test_cached_features_are_the_backbone_output_and_repeat_hits(root):
    model, cache = _model(), FeatureCache()
    items = _items(root)
    ds = ItemDataset(items, PREP)
    feats = cache.features(model.backbone, ds, CPU)
    assert feats.shape == (len(items), 512) and cache.misses == len(items) and cache.hits == 0
    with torch.inference_mode():
        direct = model.backbone(preprocess(torch.from_numpy(ds.raw_crop(5))[None], PREP))[0]
    torch.testing.assert_close(feats[5], direct, rtol=1e-4, atol=1e-5)

    again = cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    assert cache.hits == len(items) and cache.misses == 0
    assert torch.equal(again, feats)
    # A few new labels: only they run through the backbone.
    more = cache.features(model.backbone, ItemDataset(items[:3] + _items(root, tile=16)[:2], PREP), CPU)
    assert (cache.hits, cache.misses) == (3, 2) and len(more) == 5


def test_changed_tiles_miss(root):
    model, cache = _model(), FeatureCache()
    cache.features(model.backbone, ItemDataset(_items(root, 32), PREP), CPU)
    shifted = [i for i in research_items(root, FramePolicy(), TileSpec(tile_size=32, stride=16))
               if i.box[0] % 32 or i.box[1] % 32]  # boxes the 32-grid does not have
    cache.features(model.backbone, ItemDataset(shifted, PREP), CPU)
    assert cache.hits == 0 and cache.misses == len(shifted)


def test_changed_backbone_misses_heads_do_not_matter(root):
    model, cache = _model(), FeatureCache()
    items = _items(root)
    cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    with torch.no_grad():
        model.classifier[-1].weight.add_(1.0)  # heads are not part of the key
    cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    assert cache.misses == 0
    before = backbone_digest(model.backbone)
    with torch.no_grad():
        model.backbone.layer4[1].bn2.running_mean.add_(0.1)  # a buffer changes features too
    assert backbone_digest(model.backbone) != before
    feats = cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    assert cache.hits == 0 and cache.misses == len(items)
    assert torch.isfinite(feats).all()


def test_remembered_digest_follows_every_kind_of_backbone_change():
    """The digest is memoised per module; each way weights change must still change it."""
    model = _model()
    other = _model()
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(2.0)
    first = backbone_digest(model.backbone)
    assert backbone_digest(model.backbone) == first  # unchanged: the remembered digest
    model.backbone.load_state_dict(other.backbone.state_dict())  # weights of another model
    loaded = backbone_digest(model.backbone)
    assert loaded != first and loaded == backbone_digest(other.backbone)
    params = [p for p in model.backbone.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    model.backbone.train()
    model.backbone(torch.rand(2, 3, 32, 32)).sum().backward()  # also updates BN statistics
    optimizer.step()
    stepped = backbone_digest(model.backbone)
    assert stepped != loaded
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] = 7.0  # in place, same storage
    edited = backbone_digest(model.backbone)
    assert edited != stepped
    # New storage with the same values: recomputed, and the same content gives the same key.
    model.backbone.conv1.weight = torch.nn.Parameter(model.backbone.conv1.weight.clone())
    assert backbone_digest(model.backbone) == edited
    model.backbone.conv1.weight = torch.nn.Parameter(model.backbone.conv1.weight + 1.0)
    replaced = backbone_digest(model.backbone)
    assert replaced != edited
    model.backbone.double()  # dtype change
    assert backbone_digest(model.backbone) != replaced


def test_rewritten_image_misses_only_its_items(tmp_path):
    model, cache = _model(), FeatureCache()
    root = tmp_path / "data"
    write_research_dataset(root, n_infected=1, n_mock=1, n_frames=4, size=64, seed=5)
    items = _items(root)
    cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    target = items[0].stack
    with open_stack(target) as stack:
        data = stack.frames(range(stack.n_frames))
    # The user re-exports the stack from another program (this process never writes an input).
    tifffile.imwrite(target, 255 - data, imagej=True, metadata={"axes": "TYX", "finterval": 1800})
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-clock file systems
    cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    rewritten = sum(i.stack == target for i in items)
    assert cache.misses == rewritten and cache.hits == len(items) - rewritten


def test_in_memory_stacks_are_keyed_on_their_pixels(root):
    model, cache = _model(), FeatureCache()
    items = _items(root)
    path = items[0].stack
    frames = generate_stack(True, seed=1, n_frames=6, size=64, dtype="uint8")
    mine = [i for i in items if i.stack == path]
    ds = ItemDataset(mine, PREP, stacks={(path, None): stack_from_array(frames)})
    cache.features(model.backbone, ds, CPU)
    cache.features(model.backbone, ItemDataset(mine, PREP, stacks={(path, None): stack_from_array(frames)}), CPU)
    assert cache.misses == 0
    edited = frames.copy()
    edited[mine[0].frame, :8, :8] = 0
    cache.features(model.backbone, ItemDataset(mine, PREP, stacks={(path, None): stack_from_array(edited)}), CPU)
    assert cache.misses == 1  # the one tile whose pixels changed


def test_bounded_size_evicts_least_recently_used(root):
    model, cache = _model(), FeatureCache(max_items=5)
    items = _items(root)[:8]
    feats = cache.features(model.backbone, ItemDataset(items, PREP), CPU)
    assert len(cache) == 5 and len(feats) == 8
    cache.features(model.backbone, ItemDataset(items[-5:], PREP), CPU)
    assert cache.misses == 0


def test_heads_only_training_computes_features_once_per_item(root):
    items = _items(root)
    model = _model()
    meta = CheckpointMeta(model=model.config, preprocessing=PREP, time=TimePolicy())
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = model.classifier[-1].weight.clone()
    cache = FeatureCache()
    config = TrainConfig(epochs=3, batch_size=8, lr=1e-3, mode="heads", device="cpu")
    train, val = items[::2], items[1::2]
    first = list(iter_train(model, ItemDataset(train, PREP), ItemDataset(val, PREP), config, meta,
                            feature_cache=cache))
    stages = [e.stage for e in first]
    assert stages[0] == "features" and stages[-1] == "done" and stages.count("epoch") == 3
    assert "val_roc_auc" in first[-1].history[0]
    assert len(cache) == len(items)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    assert not torch.equal(model.classifier[-1].weight, heads)
    # The heads learnt on the features prediction gives them (fp32 on the CPU), not bf16 ones.
    cache.features(model.backbone, ItemDataset(train, PREP), CPU, prediction_dtype(CPU, "auto"))
    assert (cache.hits, cache.misses) == (len(train), 0)

    second = list(iter_train(model, ItemDataset(train, PREP), ItemDataset(val, PREP), config, meta,
                             feature_cache=cache))
    assert "features" not in [e.stage for e in second] and second[-1].stage == "done"
    batches = [e for e in second if e.stage == "batch"]
    assert len(batches) == 3 * -(-len(train) // 8)


def test_stop_during_features_keeps_what_was_computed(root):
    items = _items(root)
    model = _model()
    meta = CheckpointMeta(model=model.config, preprocessing=PREP, time=TimePolicy())
    cache = FeatureCache()
    config = TrainConfig(epochs=1, batch_size=4, mode="heads", device="cpu")
    seen = []
    events = list(iter_train(model, ItemDataset(items, PREP), None, config, meta,
                             should_stop=lambda: len(seen) >= 2 or seen.append(1),
                             feature_cache=cache))
    assert events[-1].stage == "stopped"
    assert 0 < len(cache) < len(items)
    done = list(iter_train(model, ItemDataset(items, PREP), None, config, meta, feature_cache=cache))
    assert done[-1].stage == "done" and len(cache) == len(items)
    assert done[0].batches == len(items) - 4 * 2  # only the rest ran through the backbone
