"""Picks the device the networks run on from a stage's `--device` option.

Reads whether CUDA is available here; writes nothing. `auto` is CUDA when there is
a GPU and the CPU otherwise; a device named explicitly must exist on this machine,
or the stage stops before any work with a `ConfigError` saying what to pass.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else must be usable here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device (make: DEVICE) must be auto, cpu, cuda or cuda:N, not {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use DEVICE=cpu or auto")
    return resolved
