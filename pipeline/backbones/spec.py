"""What every backbone is: its preprocessing, its table entry, and the ready extractor built from them.

Reads and writes nothing. A `BackboneSpec` names the builder, where the network is
cut, the feature dimension, where its published weights come from and the
preprocessing they were trained with; a `Backbone` is a built, weighted, placed
network that turns uint8 frames into feature vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import PipelineError
from ..precision import autocast


class WeightsError(PipelineError):
    """Pretrained weights that cannot be had; the message says what to do."""


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic" (CLIP's)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: (N, 3, H, W) uint8 -> (N, 3, crop, crop) float32
        return self.normalize(self.geometry(frames))

    def geometry(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize and crop, still in uint8: (N, 3, H, W) -> (N, 3, crop, crop)."""
        x = TF.resize(frames, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        return TF.center_crop(x, [self.crop])

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        # (N, 3, crop, crop) uint8 -> float32 scaled to [0, 1] and normalised
        return TF.normalize(frames.float() / 255.0, list(self.mean), list(self.std))

    def to_dict(self) -> dict:
        """The parameters a store records; bilinear, the first backbones' resize, is left implicit so that the
        stores made before the field existed keep their settings."""
        values = asdict(self)
        if values["interpolation"] == "bilinear":
            del values["interpolation"]
        return values


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layer: str  # where the network is cut, in words
    feature_dim: int
    build: Callable[[], nn.Module]  # the architecture with random weights
    cut: Callable[[nn.Module], nn.Module]  # full network -> feature extractor
    pretrained_weights: Callable[[], tuple[dict, str]]  # -> (state dict of the full network, identity)
    preprocess: Preprocess


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
