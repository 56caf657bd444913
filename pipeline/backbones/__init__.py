"""The backbones that turn frames into feature vectors: one table over one module per family.

Reads weights (each family's from where its library gets them, or a file the user names); writes nothing.
`BACKBONES` is the table the command lines, the store and `caption.py` read: each name maps to its builder,
the layer it is cut at, its feature dimension, its published weights and the preprocessing that goes with
them. The families: `imagenet` (VGG, ResNet, EfficientNet-Lite0), `clip` (OpenCLIP's image encoders) and
`kinetics` (torchvision's Kinetics-400 video networks, a feature per window of consecutive frames).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from . import clip, imagenet, kinetics
from .spec import Backbone, BackboneSpec, Preprocess, WeightsError
from .weights import file_identity, file_weights, refused_pickle, weights_option

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "Preprocess", "WeightsError", "file_identity", "get_spec",
           "load_backbone", "refused_pickle", "weights_option"]

RANDOM_SEED = 0  # random weights are seeded, so a "random" store is reproducible
BACKBONES: dict[str, BackboneSpec] = {**imagenet.SPECS, **clip.SPECS, **kinetics.SPECS}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def load_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build backbone `name` with `weights`: "imagenet" (the weights the backbone is published with: ImageNet's,
    OpenAI's for CLIP, Kinetics-400's for the video networks), "random", or a file path holding a state dict of
    the whole network (before the cut)."""
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = spec.build()
    if weights == "random":
        identity = f"random(seed={RANDOM_SEED})"
    else:
        state, identity = spec.pretrained_weights() if weights == "imagenet" else file_weights(Path(weights))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"weights {weights} do not fit {name}: {str(exc).splitlines()[0]}") from None
    return Backbone(spec, spec.cut(net).eval().requires_grad_(False), identity)
