import pytest
import torch

from napari_infection_clock.core.model import (
    ARCHITECTURES,
    ModelConfig,
    MultitaskResNet,
    PretrainedWeightsUnavailable,
    build_model,
    imagenet_weights_file,
)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_backbone_builds_with_spec_feature_width(arch):
    model = MultitaskResNet(ModelConfig(arch=arch))
    assert model.classifier[1].in_features == model.config.feature_width
    assert "backbone.fc.weight" not in model.state_dict()


def test_resnet50_forward_gives_logits_and_time():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50")).eval()
    with torch.inference_mode():
        logits, t = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 2) and t.shape == (2,)
    assert torch.isfinite(logits).all() and torch.isfinite(t).all()


def test_head_layouts_follow_spec():
    m = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=256, dropout=0.2))
    keys = {k for k in m.state_dict() if not k.startswith("backbone")}
    assert keys == {
        f"{h}.{i}.{p}"
        for h in ("classifier", "regressor")
        for i in (1, 4)
        for p in ("weight", "bias")
    }
    single = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=0, dropout=0.2))
    assert single.classifier[1].out_features == 2 and len(single.classifier) == 2
    no_drop = MultitaskResNet(ModelConfig(arch="resnet18", hidden_dim=64, dropout_slots=False))
    assert isinstance(no_drop.classifier[0], torch.nn.Linear)


def test_class_conditioning_widens_regressor_input():
    m = MultitaskResNet(ModelConfig(arch="resnet18", cls_conditioning=True)).eval()
    assert m.regressor[1].in_features == 512 + 2
    with torch.inference_mode():
        _, t = m(torch.randn(1, 3, 32, 32))
    assert t.shape == (1,)


def test_imagenet_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = imagenet_weights_file("resnet18")
    assert target.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        build_model(ModelConfig(arch="resnet18"), init="imagenet", allow_download=False)
    message = str(err.value)
    assert target.name in message and str(target.parent) in message and "random" in message


def test_imagenet_loads_from_torchvision_cache(tmp_path, monkeypatch):
    """The real loading path: a weights file in torchvision's cache folder is used."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = imagenet_weights_file("resnet18")
    target.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = MultitaskResNet(ModelConfig(arch="resnet18")).backbone.state_dict()
    reference["fc.weight"] = torch.zeros(1000, 512)
    reference["fc.bias"] = torch.zeros(1000)
    torch.save(reference, target)
    model = build_model(ModelConfig(arch="resnet18"), init="imagenet", allow_download=False)
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])


def test_bad_config_messages():
    with pytest.raises(ValueError, match="unknown backbone"):
        ModelConfig(arch="vgg16")
    with pytest.raises(ValueError, match="unknown init"):
        build_model(ModelConfig(arch="resnet18"), init="imagenet21k")
