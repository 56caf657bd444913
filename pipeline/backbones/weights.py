"""Weights from a file the user names (`WEIGHTS=path`): a PyTorch state dict or a safetensors file.

Reads the file; writes nothing. PyTorch files are read with torch's weights-only reader, so a file holding
code is refused without running it, in words that never advise loading it unchecked (`refused_pickle`, which
the checkpoint reader shares). The identity recorded in a store names the file and its content's hash.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import torch

from .spec import WeightsError


def refused_pickle(exc: pickle.UnpicklingError) -> str:
    """Why torch's weights-only reader refused a file, without torch's advice to load it unchecked (which would
    run whatever code the file holds)."""
    wanted = re.search(r"GLOBAL (\S+)", str(exc))
    if wanted:
        return f"it asks to load {wanted.group(1)}, which a file of tensors never holds"
    return "it holds something other than tensors and plain values, or it is damaged"


def file_weights(path: Path) -> tuple[dict, str]:
    """The state dict in `path` (a `state_dict` entry inside it, where there is one) and its identity."""
    identity = file_identity(path)
    try:
        state = _read(path)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} is not a file of weights ({refused_pickle(exc)}); it was refused "
                           f"unloaded, and nothing in it ran; download the weights again from their source") from None
    except Exception as exc:  # torch and safetensors raise several types for damaged or foreign files
        raise WeightsError(f"weights file {path} cannot be read as a state dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]}); download it again") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state.get("state_dict", state), identity


def weights_option(identity: str) -> str:
    """The WEIGHTS value that loads the weights a store records as `identity`: "random", "imagenet" (a backbone's
    published weights, whatever their source), or the name of the file they were read from."""
    if identity.startswith("random"):
        return "random"
    return identity.split(":")[1] if identity.startswith("file:") else "imagenet"


def file_identity(path: Path) -> str:
    """How a store records weights read from `path`: the file's name and its content's hash."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    with path.open("rb") as f:
        return f"file:{path.name}:sha256={hashlib.file_digest(f, 'sha256').hexdigest()[:16]}"


def _read(path: Path) -> object:
    if path.suffix == ".safetensors":  # how the Hugging Face hub ships OpenCLIP's weights
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)
