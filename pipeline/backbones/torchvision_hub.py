"""torchvision's published weights and their preprocessing, for the families built from torchvision's models.

Reads the weights from the torch hub cache, downloading them there when online; writes nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from .spec import Preprocess, WeightsError


def preprocess_of(weights_enum) -> Preprocess:
    """The preprocessing torchvision's weights were trained with (a resize of the shorter side, or of both
    sides where the weights name two)."""
    t = weights_enum.transforms()
    resize = tuple(t.resize_size) if len(t.resize_size) == 2 else t.resize_size[0]
    return Preprocess(resize, t.crop_size[0], tuple(t.mean), tuple(t.std))


def hub_weights(weights_enum) -> Callable[[], tuple[dict, str]]:
    """Load torchvision weights from the hub cache, downloading if online."""

    def load() -> tuple[dict, str]:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights_enum.url).path).name
        try:
            state = weights_enum.get_state_dict(progress=True)
        except (OSError, RuntimeError) as exc:  # no network, or a partial or damaged file in the cache
            raise WeightsError(
                f"weights {weights_enum} are not in the torch hub cache and could not be "
                f"downloaded ({exc}).\n  Either download {weights_enum.url}\n  on a machine with a "
                f"network and place it at {cached}\n  (or pass WEIGHTS=/path/to/that/file), or use "
                f"BACKBONE=efficientnet_lite0, whose ImageNet weights install offline with the project."
            ) from None
        return state, f"torchvision:{weights_enum}"

    return load
