"""The video family: torchvision's Kinetics-400 networks R(2+1)D-18, S3D and MViT-v2-S, cut before their
classifiers.

Reads weights from torchvision's hub cache (downloading them when online); writes nothing. Each feature
describes a window of `WINDOW` consecutive decoded frames around a sampled position (`video.window_indices`),
the clip length the networks are run at: 16 frames, as R(2+1)D and MViT-v2-S were trained (MViT-v2-S takes
no other length; S3D takes any from 14, and 16 keeps every stream's window the same half-second at 30 fps).
A window arrives as `(N, WINDOW, 3, crop, crop)` and is turned to the networks' `(N, 3, WINDOW, crop, crop)`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torchvision
from torch import nn

from .spec import BackboneSpec
from .torchvision_hub import hub_weights, preprocess_of

WINDOW = 16


class _Windows(nn.Module):
    """A video network over windows given frame-major: `(N, T, 3, H, W)` -> `(N, D)`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net(windows.transpose(1, 2))  # (N, T, 3, H, W) -> (N, 3, T, H, W) -> (N, D)


def _without(head: str):
    """Replace the network's classifier `head` by the identity: what is left ends in its pooled feature."""
    def cut(net: nn.Module) -> nn.Module:
        setattr(net, head, nn.Identity())
        return _Windows(net)
    return cut


def _kinetics(name: str, layer: str, dim: int, head: str, weights_enum) -> BackboneSpec:
    # torchvision's video preset resizes without antialiasing, as the networks were trained
    preprocess = replace(preprocess_of(weights_enum), antialias=False)
    return BackboneSpec(name, layer, dim, getattr(torchvision.models.video, name), _without(head),
                        hub_weights(weights_enum), preprocess, WINDOW)


_v = torchvision.models.video
SPECS: dict[str, BackboneSpec] = {
    "r2plus1d_18": _kinetics("r2plus1d_18", "global average pool", 512, "fc", _v.R2Plus1D_18_Weights.KINETICS400_V1),
    # S3D's classifier is a 1x1x1 convolution followed by a mean over time and space: without it, the mean of
    # the pooled trunk
    "s3d": _kinetics("s3d", "average pool, mean over time", 1024, "classifier", _v.S3D_Weights.KINETICS400_V1),
    "mvit_v2_s": _kinetics("mvit_v2_s", "class token after the last norm", 768, "head",
                           _v.MViT_V2_S_Weights.KINETICS400_V1),
}
