"""Checkpoints: plain dicts written atomically and read with `weights_only=True`.

Reads and writes `RUN/{last,best}.pt`. A checkpoint holds `model` (state dict),
`model_config`, `vocab`, `feature_settings` (the store it was trained on),
`optimizer`, `scheduler`, `train_config`, `epoch` (epochs done), `best_score`,
`history` (the metrics rows) and `rng`; it alone is enough to caption new videos.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .captions import Vocab
from .config import atomic_write
from .model import S2VT, S2VTConfig
from .store import FeatureStore, StoreSettings

# Store settings that must match between a checkpoint and the features it is given.
FEATURE_KEYS = ("backbone", "layer", "feature_dim", "frames", "weights", "preprocessing")


class CheckpointError(Exception):
    """A checkpoint that cannot be used here; the message names the file and what differs."""


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint (train a run first with `make train`)") from None
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def model_from_checkpoint(checkpoint: dict) -> tuple[S2VT, Vocab]:
    model = S2VT(S2VTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), Vocab.from_dict(checkpoint["vocab"])


def feature_problems(checkpoint: dict, store: FeatureStore) -> list[str]:
    """How `store`'s features differ from those the checkpoint was trained on."""
    trained_on = StoreSettings(**checkpoint["feature_settings"])
    return [f"features {line}" for line in trained_on.differences(store.settings, only=FEATURE_KEYS)]
