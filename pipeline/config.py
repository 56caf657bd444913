"""One dataclass config per stage, and the plumbing every stage's CLI shares.

Reads command-line arguments; writes `config.json` files. Each field's help text
is its one-line description; the same dataclass builds the `--help` of the stage's
script, is printed when the stage starts, and is saved beside its outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A config field with its default and its `--help` line."""
    return field(default=default, metadata={"help": help})


@dataclass
class ExtractConfig:
    raw: str = opt("data/raw", "folder of video clips (.avi, .mp4, .mkv, .webm, .mov)")
    features: str = opt("data/features/vgg16_80.h5", "HDF5 feature store to create or extend")
    backbone: str = opt("vgg16", "vgg16, vgg19, resnet50, resnet101, resnet152 or efficientnet_lite0")
    frames: int = opt(80, "frames sampled uniformly from each clip")
    weights: str = opt("imagenet", "'imagenet', 'random' (tests only), or a path to a state-dict file")
    device: str = opt("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    batch: int = opt(0, "frames per forward pass through the backbone; 0 = 16 on CPU (2x faster than 80 for "
                        "EfficientNet-Lite0 there), 80 on a GPU")
    decoder: str = opt("auto", "video decoder: 'auto' (= opencv), 'opencv' or 'decord'")
    dtype: str = opt("float32", "stored feature dtype: float32 or float16")
    precision: str = opt("auto", "backbone arithmetic: fp32, bf16, fp16 (CUDA only), or auto = bf16 where the "
                                 "hardware computes it natively (recent CPUs and GPUs), else fp32; an existing "
                                 "store is extended at the precision it was made with")
    workers: int = opt(0, "threads decoding clips ahead of the backbone; 0 = 1 on CPU, up to 8 with a GPU")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--name` option per field of dataclass `cls`, with its default and help."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_config(cls: type[T], name: str, description: str, argv: list[str] | None) -> T:
    """A stage's config from its command line (one option per field), printed before the stage runs."""
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser, cls)
    cfg = config_from_args(cls, parser.parse_args(argv))
    print_config(name, cfg)
    return cfg


def print_config(name: str, cfg: Any) -> None:
    print(f"{name} config:")
    for key, value in dataclasses.asdict(cfg).items():
        print(f"  {key:>16} = {value}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def resolve_device(device: str):
    """'auto' -> CUDA when available, else CPU; anything else must be usable here."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use DEVICE=cpu or auto")
    return resolved


@dataclass
class TrainConfig:
    features: str = opt("data/features/vgg16_80.h5", "feature store made by `make features`")
    labels: str = opt("data/training_label.json", "training captions (MLDS JSON, CSV, MSR-VDC CSV or MSVD split)")
    run_dir: str = opt("runs/s2vt", "run folder: checkpoints, metrics.csv, plots, config.json")
    epochs: int = opt(100, "total epochs; a finished run called with more continues to the new count")
    batch_size: int = opt(64, "captions per optimisation step")
    lr: float = opt(1e-3, "Adam learning rate")
    lr_schedule: str = opt("none", "'none' or 'cosine' (decay to 0 over `epochs`)")
    hidden: int = opt(512, "LSTM hidden size")
    embed: int = opt(512, "word embedding size")
    dropout: float = opt(0.3, "dropout on frame projections, embeddings and the output layer")
    attention: str = opt("none", "'none' (plain S2VT), 'luong' or 'bahdanau'")
    bidirectional: bool = opt(False, "bidirectional first LSTM")
    motion: float = opt(0.0, "weight of a motion stream (features minus the first frame's) beside the "
                             "features; 0 = off")
    schedule: str = opt("inverse_sigmoid", "teacher forcing per epoch: inverse_sigmoid (the seed's), constant, linear")
    captions_per_epoch: str = opt("one", "'one' random caption per video each epoch (the seed's way), or 'all'")
    max_len: int = opt(20, "words kept per caption (longer ones are cut)")
    min_count: int = opt(3, "words seen fewer times become <unk>")
    val_fraction: float = opt(0.05, "share of the labelled videos held out for validation")
    clip_grad: float = opt(5.0, "gradient-norm clipping threshold")
    seed: int = opt(0, "seed for initialisation, the split, caption sampling and dropout")
    device: str = opt("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    precision: str = opt("auto", "fp32, bf16 (autocast; weights stay float32), or auto = bf16 on a GPU that "
                                 "computes it natively, else fp32 (bf16 on a CPU is faster but learned less "
                                 "well in our tests)")
    feature_memory: float = opt(0.0, "GB of RAM the features may take; a larger set is read from the store "
                                     "batch by batch (0 = half of the memory available at start)")


@dataclass
class EvalConfig:
    run_dir: str = opt("runs/s2vt", "run folder with the checkpoint; captions and scores are written there")
    features: str = opt("data/features/vgg16_80.h5", "feature store holding the videos to caption")
    references: str = opt("data/testing_label.json", "test captions to score against")
    checkpoint: str = opt("best.pt", "checkpoint file in the run folder")
    train_labels: str = opt("", "training labels for the constant-caption baseline (default: the run's own)")
    raw: str = opt("data/raw", "folder of the raw clips, for the report's GIFs (missing clips are noted)")
    report_videos: int = opt(8, "test videos shown in the report")
    attributes: str = opt("", "JSON of each test clip's colour, shape and motion (the sample set's): adds "
                              "per-attribute accuracy to the scores")
    beam: int = opt(5, "beam size (1 = greedy)")
    length_penalty: float = opt(0.0, "beam length penalty alpha: ((5 + length) / 6) ** alpha")
    block_ngram: int = opt(0, "forbid repeating any n-gram of this size (0 = off)")
    batch: int = opt(64, "videos decoded at once")
    device: str = opt("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")


@dataclass
class SampleConfig:
    sample: str = opt("data/sample", "folder to write the clips and labels into")
    clips_per_combination: int = opt(4, "training clips per (colour, shape, motion) combination")
    test_clips_per_combination: int = opt(3, "test clips per held-out combination")
    held_out: int = opt(8, "combinations kept out of training: the test split")
    frames: int = opt(32, "frames per clip")
    size: int = opt(112, "frame width and height in pixels")
    seed: int = opt(0, "seed for everything random")
