"""What every backbone is: its preprocessing, its table entry, and the ready extractor built from them.

Reads and writes nothing. A `BackboneSpec` names the builder, where the network is
cut, the feature dimension, where its published weights come from and the
preprocessing they were trained with; a `Backbone` is a built, weighted, placed
network that turns uint8 frames into feature vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
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

    resize: int | tuple[int, int]  # the shorter side, or (height, width) exactly
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # or "bicubic" (CLIP's)
    antialias: bool = True  # torchvision's video networks were trained on frames resized without

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        # frames: (N, 3, H, W) uint8 -> (N, 3, crop, crop) float32
        return self.normalize(self.geometry(frames))

    def geometry(self, frames: torch.Tensor) -> torch.Tensor:
        """Resize and crop, still in uint8: (N, 3, H, W) -> (N, 3, crop, crop)."""
        size = list(self.resize) if isinstance(self.resize, tuple) else [self.resize]
        x = TF.resize(frames, size, interpolation=InterpolationMode(self.interpolation),
                     antialias=self.antialias)
        return TF.center_crop(x, [self.crop])

    def frame_geometry(self, frame: np.ndarray) -> np.ndarray:
        """`geometry` of one decoded frame: (H, W, 3) uint8 -> (crop, crop, 3) uint8."""
        cropped = self.geometry(torch.from_numpy(frame).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
        return np.ascontiguousarray(cropped)  # a copy of the crop alone, not a view holding the whole resize

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        # (..., 3, crop, crop) uint8 -> float32 scaled to [0, 1] and normalised
        return TF.normalize(frames.float() / 255.0, list(self.mean), list(self.std))

    def to_dict(self) -> dict:
        """The parameters a store records; an antialiased bilinear resize, the first backbones', is left implicit
        so that the stores made before these fields existed keep their settings."""
        implicit = {"interpolation": "bilinear", "antialias": True}
        return {k: v for k, v in asdict(self).items() if implicit.get(k, not v) != v}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    layer: str  # where the network is cut, in words
    feature_dim: int
    build: Callable[[], nn.Module]  # the architecture with random weights
    cut: Callable[[nn.Module], nn.Module]  # full network -> feature extractor
    pretrained_weights: Callable[[], tuple[dict, str]]  # -> (state dict of the full network, identity)
    preprocess: Preprocess
    window: int = 1  # consecutive frames a feature describes: 1 for an image network, the clip length for a video one
    cpu_bf16: bool = True  # whether PRECISION=auto runs it at bf16 on a CPU that has bf16 natively


@dataclass
class Backbone:
    """A ready feature extractor: `(N, 3, H, W)` uint8 frames -> `(N, D)` float32 features; a video network
    takes windows of consecutive frames `(N, window, 3, H, W)`."""

    spec: BackboneSpec
    module: nn.Module
    weights: str  # identity of the weights, recorded in the feature store
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16

    def place(self, device: torch.device, precision: str) -> "Backbone":
        """Move to `device` and run at `precision` from now on. 2D convolutions run channels-last, which
        measured 1.3x to 2x faster on CPU for VGG16 and EfficientNet-Lite0, at fp32 and bf16."""
        self.module.to(device, memory_format=torch.channels_last if self.spec.window == 1 else torch.preserve_format)
        self.device, self.precision = device, precision
        return self

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode_cropped(self.spec.preprocess.geometry(frames))

    @torch.inference_mode()
    def encode_cropped(self, frames: torch.Tensor) -> torch.Tensor:
        """Features of frames (or windows of frames) already resized and cropped by `spec.preprocess.geometry`."""
        x = self.spec.preprocess.normalize(frames.to(self.device, non_blocking=True))  # (N, [window,] 3, c, c)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.module(x).float()  # (N, D)
