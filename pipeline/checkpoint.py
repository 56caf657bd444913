"""Checkpoints: what a run saves after each epoch, as plain dicts read with `weights_only=True` (a file
holding anything else, pickled code included, is refused unloaded).

Reads and writes `RUN/{last,best}.pt`, atomically. A checkpoint holds `model`
(state dict), `model_config`, `vocab`, `feature_settings` (the settings of each store
it was trained on, one per feature stream, in order; a checkpoint made before streams holds
one store's settings alone), `optimizer`, `scheduler`, `train_config`, `epoch` (epochs done), `best_score`,
`history` (the metrics rows), `rng` (the random state, one per process under
torchrun) and `layout` (how the model's weights are laid out); it alone is enough
to caption new videos. Here it is built, checked against a run's settings, and
restored into a model, an optimizer and the random state; one whose weights are
not finite is refused wherever it is loaded.
"""

from __future__ import annotations

import dataclasses
import pickle
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import distributed
from .backbones import refused_pickle
from .vocab import Vocab
from .config import TrainConfig
from .errors import PipelineError
from .files import atomic_write
from .model import S2VT, S2VTConfig
from .store import StoreSettings
from .streams import FeatureStreams

# Store settings that must match between a checkpoint and the features it is given.
FEATURE_KEYS = ("backbone", "layer", "feature_dim", "frames", "weights", "preprocessing")
# Config fields that shape the model, its vocabulary or the data split: a run cannot resume with others.
FIXED_FIELDS = ("hidden", "embed", "attention", "bidirectional", "motion", "max_len", "min_count", "seed",
                "val_fraction", "split", "val_split")
# 2: the second LSTM's input weights in one module per part (decoder, word_in, context_in); 1 had one matrix.
LAYOUT = 2


class CheckpointError(PipelineError):
    """A checkpoint that cannot be used here; the message names the file and what differs."""


@dataclass
class Progress:
    """Where a run stands: epochs done, the metrics rows, the best score so far."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float = float("-inf")


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """`checkpoint` into `path`, atomically; a failed write is an `OutputError` saying why (a full disk)."""
    def write(tmp: Path) -> None:
        # Into a Python file: its failed write's OSError, with its errno, is raised or is what torch's RuntimeError
        # is raised over (`atomic_write` finds it); given a path, torch says only "unexpected pos" or "iostream error"
        with tmp.open("wb") as f:
            torch.save(checkpoint, f)

    atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint (train a run first with `make train`)") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: not a checkpoint of this project "
                              f"({refused_pickle(exc)}); it was refused unloaded, and nothing in it ran; use the "
                              f"best.pt or last.pt of a run trained with `make train`") from None
    except Exception as exc:  # torch raises several types for damaged or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    _refuse_non_finite(checkpoint, path)
    return checkpoint


def _refuse_non_finite(checkpoint, path: str | Path) -> None:
    """Weights holding NaN or infinite values (a run that diverged, saved before training stopped at that)
    caption nothing and train nothing: refused, naming the file."""
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    weights = [t for t in state.values() if torch.is_tensor(t)] if isinstance(state, dict) else []
    if not all(torch.isfinite(t).all() for t in weights):
        raise CheckpointError(f"{path}: its weights hold NaN or infinite values (its training diverged): it can "
                              f"neither caption nor be resumed; train a new run (another RUN) with a lower --lr")


def _current_layout(state: dict, cfg: S2VTConfig) -> dict:
    """A layout-1 state dict (the second LSTM's input weights as one [word | h1 | context] matrix) in
    today's layout; other state dicts unchanged."""
    if "word_in.weight" in state:
        return state
    combined = state["decoder.weight_ih_l0"]  # (4H, embed + enc [+ enc])
    enc = cfg.hidden * (2 if cfg.bidirectional else 1)
    state = dict(state, **{"word_in.weight": combined[:, :cfg.embed],
                           "decoder.weight_ih_l0": combined[:, cfg.embed:cfg.embed + enc]})
    if cfg.attention == "bahdanau":
        state["context_in.weight"] = combined[:, cfg.embed + enc:]
    return {k: v.contiguous() for k, v in state.items()}


def model_from_checkpoint(checkpoint: dict) -> tuple[S2VT, Vocab]:
    cfg = S2VTConfig(**checkpoint["model_config"])
    model = S2VT(cfg)
    model.load_state_dict(_current_layout(checkpoint["model"], cfg))
    return model.eval(), Vocab.from_dict(checkpoint["vocab"])


def trained_streams(checkpoint: dict) -> list[StoreSettings]:
    """The settings of each feature stream the checkpoint was trained on, in order (older checkpoints: one,
    and fp32 features)."""
    recorded = checkpoint["feature_settings"]
    return [StoreSettings(**settings) for settings in (recorded if isinstance(recorded, list) else [recorded])]


def feature_problems(checkpoint: dict, store: FeatureStreams) -> list[str]:
    """How the features of `store` (its streams, in order) differ from those the checkpoint was trained on."""
    trained, given = trained_streams(checkpoint), store.settings
    if len(trained) != len(given):
        return [f"features: the run was trained on {_backbones(trained)}, FEATURES names {_backbones(given)}: "
                f"give the stores of the run's {len(trained)} stream{'s' if len(trained) > 1 else ''}, in order"]
    if len(trained) == 1:
        return [f"features {line}" for line in trained[0].differences(given[0], only=FEATURE_KEYS)]
    identities = [_identity(s) for s in given]
    if list(map(_identity, trained)) != identities and sorted(map(_identity, trained)) == sorted(identities):
        in_order = " ".join(str(store.stores[identities.index(_identity(s))].path) for s in trained)
        return [f"FEATURES names the run's stores in another order: give them as the run was trained "
                f"({_backbones(trained)}), FEATURES=\"{in_order}\""]
    return [f"stream {i}, {path}: {line}" for i, (ours, theirs, path) in
            enumerate(zip(trained, given, (s.path for s in store.stores)), 1)
            for line in ours.differences(theirs, only=FEATURE_KEYS, sides=("in the run", "in this store"))]


def _identity(settings: StoreSettings) -> tuple:
    return tuple(getattr(settings, key) for key in FEATURE_KEYS)


def _backbones(streams: list[StoreSettings]) -> str:
    return " + ".join(s.backbone for s in streams)


def _default(field: str):
    """A `TrainConfig` field's default: what a run made before the field existed was made with."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)


def check_resumable(checkpoint: dict, cfg: TrainConfig, vocab: Vocab, store: FeatureStreams, path: Path) -> None:
    """Refuse a checkpoint made for other features, another vocabulary or another model shape."""
    made_with = {f: checkpoint["train_config"].get(f, _default(f)) for f in FIXED_FIELDS}  # older runs lack some
    problems = [f"{f}: checkpoint has {made_with[f]!r}, asked for {getattr(cfg, f)!r}"
                for f in FIXED_FIELDS if made_with[f] != getattr(cfg, f)]
    problems += feature_problems(checkpoint, store)
    if checkpoint["vocab"]["words"] != vocab.words:
        problems.append(f"vocabulary: checkpoint has {len(checkpoint['vocab']['words'])} words, the labels "
                        f"{cfg.labels} give {len(vocab)} (other labels or another split)")
    if checkpoint.get("layout", 1) != LAYOUT:
        problems.append("written by an older version of this project: it still captions and evaluates, but "
                        "its optimizer state does not fit today's model")
    if problems:
        raise CheckpointError(f"{path} cannot be resumed with these settings:\n  " + "\n  ".join(problems) +
                              "\nUse another RUN folder for a new run, or the settings the run was started with.")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict | list, world: distributed.World, seed: int) -> None:
    """This rank's saved RNG state (a checkpoint of a torchrun run holds one per rank); a rank the
    checkpoint has no state for starts a fresh, rank-specific stream."""
    if isinstance(state, list):
        state = state[world.rank] if len(state) == world.size else None
    elif world.rank:
        state = None
    if state is None:
        print(f"rank {world.rank}: the checkpoint was written by another number of processes; "
              f"this rank's dropout draws restart from a fresh seed", file=sys.stderr)
        torch.manual_seed(seed + 1000 * world.rank)
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_checkpoint(model: S2VT, optimizer, scheduler, cfg: TrainConfig, vocab: Vocab,
                     settings: list[StoreSettings], progress: Progress, world: distributed.World) -> dict:
    """The checkpoint after `progress.epoch` epochs, trained on the feature streams of `settings`; every rank's
    RNG state is gathered into it."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "train_config": asdict(cfg), "model_config": asdict(model.cfg), "vocab": vocab.to_dict(),
            "feature_settings": [asdict(s) for s in settings], "epoch": progress.epoch, "best_score": progress.best,
            "history": progress.history, "layout": LAYOUT,
            "rng": distributed.gather(rng_state(), world) if world.distributed else rng_state()}


def restore(checkpoint: dict, model: S2VT, optimizer, scheduler, world: distributed.World, seed: int) -> Progress:
    """Put a checked checkpoint's weights, optimizer, LR schedule and RNG state back; returns its progress."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"], world, seed)
    return Progress(checkpoint["epoch"], checkpoint["history"], checkpoint["best_score"])
