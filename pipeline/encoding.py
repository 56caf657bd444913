"""Encodes a decoded clip into per-frame features with a backbone, each distinct frame once.

Reads a clip through `read_for` (the frames, or the windows of frames, that the
backbone needs) and writes nothing: takes a `Clip` (`video.py`) and a placed
`Backbone` (`backbones/`) and returns features `(F, D)` float32, one row per
sampled frame. A frame sampled twice (a short clip sampled at more frames than it
has) is resized and encoded once; so is a window. Extraction (`features.py`) uses the steps apart,
preparing clips in its decoding threads; `caption_files.py`, the bench and the
tests encode a whole clip with `encode_clip`. Features that are not finite are refused
by both (`non_finite` says why).
"""

from __future__ import annotations

import numpy as np
import torch

from .backbones import Backbone
from .video import Clip, read_clip

GEOMETRY_CHUNK = 8  # frames resized at once in a decoding thread
# Frames per forward pass by default: on a CPU 16 ran EfficientNet-Lite0 2x faster than 80; on a GPU a pass
# takes several clips' frames.
CPU_FORWARD_FRAMES, GPU_FORWARD_FRAMES = 16, 256


def frames_per_forward(batch: int, device: torch.device) -> int:
    """`batch`, or for 0 the measured default of `device`."""
    return batch if batch > 0 else (CPU_FORWARD_FRAMES if device.type == "cpu" else GPU_FORWARD_FRAMES)


def read_for(backbone: Backbone, path, frames: int, decoder: str = "auto", device="cpu") -> Clip:
    """`read_clip` of what `backbone` encodes: the `frames` sampled frames, or for a video network the window
    of consecutive frames around each, resized and cropped as they are decoded."""
    spec = backbone.spec
    return read_clip(path, frames, decoder, device, spec.window, spec.preprocess.frame_geometry if spec.window > 1
                     else None)


def prepare_clip(clip: Clip, backbone: Backbone) -> tuple[torch.Tensor, np.ndarray]:
    """The clip's distinct frames resized and cropped `(U, 3, crop, crop)` uint8 (for a video network its
    distinct windows `(U, window, 3, crop, crop)`), and the row of each sampled frame.

    Resizing runs on the CPU whatever the backbone's device, so a store's crops are the same on every
    machine (a GPU's float resize rounds otherwise); for a GPU they are pinned, to be copied while it works.
    Frames are resized a few at a time, so a large frame size never costs more than a few float copies."""
    if clip.window_rows is not None:  # the frames were resized and cropped as they were decoded
        rows, inverse = np.unique(clip.window_rows, axis=0, return_inverse=True)  # (U, window), (F,)
        windows = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[torch.from_numpy(rows)]  # (U, window, 3, c, c)
        return (windows.pin_memory() if backbone.device.type == "cuda" else windows), inverse.reshape(-1)
    _, first, inverse = np.unique(clip.indices, return_index=True, return_inverse=True)
    geometry = backbone.spec.preprocess.geometry
    frames = torch.cat([geometry(torch.from_numpy(clip.frames[first[i:i + GEOMETRY_CHUNK]]).permute(0, 3, 1, 2))
                        for i in range(0, len(first), GEOMETRY_CHUNK)])  # (U, 3, crop, crop) uint8
    return (frames.pin_memory() if backbone.device.type == "cuda" else frames), inverse


def encode_frames(backbone: Backbone, frames: torch.Tensor, batch: int) -> torch.Tensor:
    """Features `(N, D)` float32, on the backbone's device, of cropped frames `(N, 3, crop, crop)` (or windows
    `(N, window, 3, crop, crop)`), `batch` frames per forward pass."""
    step = max(1, batch // backbone.spec.window)
    return torch.cat([backbone.encode_cropped(frames[i:i + step]) for i in range(0, len(frames), step)])


def encode_prepared(backbone: Backbone, frames: torch.Tensor, inverse: np.ndarray, batch: int) -> np.ndarray:
    """Features `(F, D)` float32: repeated frames were encoded once."""
    return encode_frames(backbone, frames, batch).cpu().numpy()[inverse]  # (U, D) -> (F, D)


def encode_clip(backbone: Backbone, clip: Clip, batch: int = 0) -> np.ndarray:
    """Features `(F, D)` float32 of a clip's sampled frames, `batch` frames per forward (0: the default)."""
    return encode_prepared(backbone, *prepare_clip(clip, backbone), frames_per_forward(batch, backbone.device))


def non_finite(features: np.ndarray) -> str | None:
    """Why a clip's features `(F, D)` (as they would be stored) cannot be used, or None when every value is
    finite. A backbone whose arithmetic overflowed, or whose weights hold NaN, gives NaN or infinite features,
    and a model trained on them trains to NaN."""
    bad = int(np.count_nonzero(~np.isfinite(features)))
    if not bad:
        return None
    return (f"the backbone gave non-finite features ({bad} of {features.size} values NaN or infinite as "
            f"{features.dtype}): its arithmetic overflowed (try PRECISION=fp32 and float32 features) or its "
            f"WEIGHTS hold NaN or infinite values")
