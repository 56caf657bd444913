"""One dataclass config per command, checked where it is made, which also builds its command line.

Reads command-line arguments; writes nothing (each stage saves its config beside
its outputs). Each field's help text is its one-line description; the same
dataclass builds the command's `--help` (an option per field, or a positional
argument for a `positional` field) and is printed when a stage starts. An option
that several commands take is defined once, in one config, and the others take it
with `option_of`; each list of choices comes from the module that gives its values
their meaning (`BACKBONES`, `ATTENTIONS`, `SCHEDULES`, `PRECISIONS`, `DECODERS`).
Every field's allowed values (a range or a list of choices) are checked once, when
the config is made, from the command line or from Python: a bad value is refused
with a `ConfigError` naming the option, its `make` variable and what it may be.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .backbones import BACKBONES
from .encoding import CPU_FORWARD_FRAMES, GPU_FORWARD_FRAMES
from .errors import ConfigError
from .model import ATTENTIONS
from .precision import PRECISIONS, TRAINING_PRECISIONS
from .schedule import SCHEDULES
from .video import DECODERS, DEFAULT_CPU_DECODER, VIDEO_EXTENSIONS

T = TypeVar("T")
# The most frames a clip may be sampled at: each video's sampled indices are stored as an HDF5 attribute
# (8 bytes a frame), and an attribute must fit HDF5's 64 KiB object header beside the video's other ones.
MAX_FRAMES = 4096
# The project's layout (the Makefile's defaults): the stages that read or write a path share its default.
DEFAULT_RAW = "data/raw"
DEFAULT_FEATURES = "data/features/vgg16_80.h5"
DEFAULT_RUN = "runs/s2vt"


def opt(default: Any, help: str, choices: tuple = (), at_least: float | None = None,
        above: float | None = None, below: float | None = None, make: str = "") -> Any:
    """A config field: its default, its `--help` line, the values it may take (`choices`, or a range
    `>= at_least`, `> above`, `< below`) and the `make` variable that sets it, if any."""
    return field(default=default, metadata={"help": help, "choices": choices, "at_least": at_least,
                                            "above": above, "below": below, "make": make})


def positional(help: str) -> Any:
    """A config field given on the command line by position, with no flag and no default: one value, or one
    or more for a `list` field."""
    return field(metadata={"help": help, "positional": True})


def option_of(cls: type, name: str) -> Any:
    """The field `name` of config `cls`, for another config that takes the same option: it is defined once,
    with one default, help line and range."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


def _problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for field `f`, or None."""
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    for key, fails, words in (("at_least", lambda v, b: v < b, "at least"), ("above", lambda v, b: v <= b, "above"),
                              ("below", lambda v, b: v >= b, "below")):
        if meta.get(key) is not None and fails(value, meta[key]):
            return f"must be {words} {meta[key]}"
    return None


class Checked:
    """Base of the stage configs: every field is checked against its allowed values when made. A field of
    several values (a `tuple`) also takes one value, a string, or a list from Python."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _kind(f).startswith("tuple") and not isinstance(value, tuple):
                setattr(self, f.name, ((value,) if value else ()) if isinstance(value, str) else tuple(value))
            problem = _problem(f, getattr(self, f.name))
            if problem:
                make = f" (make: {f.metadata['make']})" if f.metadata.get("make") else ""
                raise ConfigError(f"--{f.name.replace('_', '-')}{make} {problem}, not {getattr(self, f.name)!r}")


def _kind(f: dataclasses.Field) -> str:
    """The field's type as written: "int", "str", "list[str]", "tuple[str, ...]"."""
    return f.type if isinstance(f.type, str) else f.type.__name__


def _add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of dataclass `cls`: a positional one, or a `--name` option with its default
    (an empty one is not shown) and its `make` variable in its help. A `tuple` field's option may be repeated
    and takes one or more values each time (`--features a.h5 b.h5`); in a command with positional arguments,
    one value each time (`--weights a.pt --weights b.pt`), so that it cannot swallow them."""
    several = 1 if any(f.metadata.get("positional") for f in dataclasses.fields(cls)) else "+"
    for f in dataclasses.fields(cls):
        kind = _kind(f)
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="+" if kind.startswith("list") else None, help=f.metadata["help"])
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(f.default) if isinstance(f.default, tuple) else f.default
        notes = ([f"default: {shown}"] if shown != "" else []) + \
            ([f"make: {f.metadata['make']}"] if f.metadata.get("make") else [])
        help_text = f.metadata["help"] + (f" ({'; '.join(notes)})" if notes else "")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif kind.startswith("tuple"):  # no default here: argparse would extend it (the config's own fills in)
            parser.add_argument(flag, action="extend", nargs=several, default=None, help=help_text)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(kind, str), default=f.default,
                                help=help_text, choices=f.metadata.get("choices") or None)


def parse_configs(description: str, argv: list[str] | None, *classes: type) -> list:
    """One config of each of `classes` from one command line, which takes an argument per field of each; a
    value out of range ends the program as argparse does."""
    parser = argparse.ArgumentParser(description=description)
    for cls in classes:
        _add_arguments(parser, cls)
    args = parser.parse_intermixed_args(argv)  # positional arguments may come before, between or after options
    try:
        return [cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                       if getattr(args, f.name) is not None}) for cls in classes]
    except ConfigError as exc:
        parser.error(str(exc))


def parse_config(cls: type[T], description: str, argv: list[str] | None) -> T:
    """A command's config from its command line, which takes an argument per field."""
    return parse_configs(description, argv, cls)[0]


def print_config(name: str, cfg: Any) -> None:
    """The config a stage runs with, one field a line, before it starts."""
    print(f"{name} config:")
    for key, value in dataclasses.asdict(cfg).items():
        print(f"  {key:>16} = {' '.join(value) if isinstance(value, tuple) else value}")


@dataclass
class ExtractConfig(Checked):
    raw: str = opt(DEFAULT_RAW, f"folder of video clips ({', '.join(VIDEO_EXTENSIONS)})", make="RAW")
    features: str = opt(DEFAULT_FEATURES, "HDF5 feature store to create or extend", make="FEATURES")
    backbone: str = opt("vgg16", "the image network", choices=tuple(BACKBONES), make="BACKBONE")
    frames: int = opt(80, f"frames sampled uniformly from each clip (at most {MAX_FRAMES})", at_least=1,
                      below=MAX_FRAMES + 1, make="FRAMES")
    weights: str = opt("imagenet", "'imagenet' (the backbone's published weights: ImageNet's, OpenAI's for CLIP), "
                       "'random' (tests only), or a path to a state-dict or .safetensors file", make="WEIGHTS")
    device: str = opt("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'", make="DEVICE")
    batch: int = opt(0, f"frames per forward pass through the backbone; 0 = {CPU_FORWARD_FRAMES} on CPU (2x faster "
                        f"than 80 for EfficientNet-Lite0 there), {GPU_FORWARD_FRAMES} on a GPU (several clips' "
                        "frames)", at_least=0, make="BATCH")
    decoder: str = opt("auto", f"video decoder: 'auto' (= {DEFAULT_CPU_DECODER}, the fastest measured), pyav, opencv, "
                               "decord, or nvdec (the GPU's, with DEVICE=cuda: exact, but slower than 16 CPU cores "
                               "in our measurement); each gives the exact sampled frames", choices=DECODERS,
                       make="DECODER")
    dtype: str = opt("float32", "stored feature dtype", choices=("float32", "float16"))
    precision: str = opt("auto", "backbone arithmetic: fp32, bf16, fp16 (CUDA only), or auto = bf16 where the "
                                 "hardware computes it natively (recent CPUs and GPUs), else fp32; an existing "
                                 "store is extended at the precision it was made with", choices=PRECISIONS,
                         make="PRECISION")
    workers: int = opt(0, "threads decoding clips ahead of the backbone; 0 = 1 on CPU, one per core up to 16 with "
                          "a GPU", at_least=0)


@dataclass
class TrainConfig(Checked):
    features: tuple[str, ...] = opt((DEFAULT_FEATURES,), "feature store made by `make features`, or several stores "
                                    "of the same clips (streams: each frame's features side by side)",
                                    make="FEATURES")
    labels: str = opt("data/training_label.json", "training captions: MLDS, MSR-VTT or VATEX JSON, a "
                                                  "video_id,caption or MSR-VDC CSV, or the MSVD standard split",
                      make="LABELS")
    split: str = opt("", "the split of LABELS to train on where it holds several (MSR-VTT: train; MSVD standard: "
                         "train)", make="SPLIT")
    val_labels: str = opt("", "captions to validate on, a benchmark's own validation split (with VAL_SPLIT alone: "
                              "LABELS); either replaces the random --val-fraction", make="VAL_LABELS")
    val_split: str = opt("", "the split of VAL_LABELS (or LABELS) to validate on (MSR-VTT: validate; MSVD "
                             "standard: val)", make="VAL_SPLIT")
    run_dir: str = opt(DEFAULT_RUN, "run folder: checkpoints, metrics.csv, plots, config.json", make="RUN")
    epochs: int = opt(100, "total epochs; a finished run called with more continues to the new count", at_least=1,
                      make="EPOCHS")
    batch_size: int = opt(64, "captions per optimisation step (under torchrun, over all processes)", at_least=1,
                          make="BATCH")
    lr: float = opt(1e-3, "Adam learning rate", above=0)
    lr_schedule: str = opt("none", "'none' or 'cosine' (decay to 0 over `epochs`)", choices=("none", "cosine"))
    weight_decay: float = opt(0.0, "AdamW's decoupled weight decay (0 = plain Adam)", at_least=0)
    hidden: int = opt(512, "LSTM hidden size", at_least=1)
    embed: int = opt(512, "word embedding size", at_least=1)
    dropout: float = opt(0.3, "dropout on frame projections, embeddings and the output layer", at_least=0, below=1)
    attention: str = opt("none", "'none' (plain S2VT), 'luong' or 'bahdanau'", choices=ATTENTIONS)
    bidirectional: bool = opt(False, "bidirectional first LSTM")
    motion: float = opt(0.0, "weight of a motion stream (features minus the first frame's) beside the "
                             "features; 0 = off", at_least=0)
    schedule: str = opt("inverse_sigmoid", "teacher forcing per epoch: inverse_sigmoid (the seed's), constant, "
                                           "linear", choices=tuple(SCHEDULES))
    captions_per_epoch: str = opt("one", "'one' random caption per video each epoch (the seed's way), or 'all'",
                                  choices=("one", "all"))
    max_len: int = opt(20, "words kept per caption (longer ones are cut)", at_least=1)
    min_count: int = opt(3, "words seen fewer times become <unk>", at_least=1)
    val_fraction: float = opt(0.05, "share of the labelled videos held out for validation; 0 = none (best.pt is "
                                    "then the epoch with the lowest training loss)", at_least=0, below=1)
    clip_grad: float = opt(5.0, "gradient-norm clipping threshold", above=0)
    label_smoothing: float = opt(0.0, "share of each target word's probability spread over the vocabulary in the "
                                      "training loss", at_least=0, below=1)
    seed: int = opt(0, "seed for initialisation, the split, caption sampling and dropout")
    device: str = option_of(ExtractConfig, "device")
    precision: str = opt("auto", "fp32, bf16 (autocast; weights stay float32), or auto = bf16 on a GPU that "
                                 "computes it natively, else fp32 (bf16 on a CPU is faster but learned less "
                                 "well in our tests)", choices=TRAINING_PRECISIONS)
    feature_memory: float = opt(0.0, "GB of RAM the features may take; a larger set is read from the store "
                                     "batch by batch (0 = half of the memory available at start)", at_least=0)
    cuda_graphs: bool = opt(True, "on one CUDA GPU, replay each training step from a captured CUDA graph (the "
                                  "same results, launched at once); --no-cuda-graphs runs every step eagerly")


@dataclass
class DecodeConfig(Checked):
    """How `decoding.py` turns features into captions: beam search, greedy at beam 1."""

    beam: int = opt(5, "beam size (1 = greedy)", at_least=1, make="BEAM")
    length_penalty: float = opt(0.0, "beam length penalty alpha: ((5 + length) / 6) ** alpha", at_least=0)
    block_ngram: int = opt(0, "forbid repeating any n-gram of this size (0 = off)", at_least=0)
    batch: int = opt(64, "videos decoded at once", at_least=1)


@dataclass
class EvalConfig(Checked):
    run_dir: str = opt(DEFAULT_RUN, "run folder with the checkpoint; captions and scores are written there",
                       make="RUN")
    features: tuple[str, ...] = option_of(TrainConfig, "features")
    references: str = opt("data/testing_label.json", "test captions to score against", make="TEST_LABELS")
    references_split: str = opt("", "the split of TEST_LABELS to score on where it holds several (MSR-VTT, MSVD "
                                    "standard: test)", make="TEST_SPLIT")
    checkpoint: str = opt("best.pt", "checkpoint file in the run folder")
    train_labels: str = opt("", "training labels for the constant-caption baseline (default: the run's own, and "
                                "its split)")
    raw: str = opt(DEFAULT_RAW, "folder of the raw clips, for the report's GIFs (missing clips are noted)",
                   make="RAW")
    report_videos: int = opt(8, "test videos shown in the report", at_least=0)
    beam: int = option_of(DecodeConfig, "beam")
    length_penalty: float = option_of(DecodeConfig, "length_penalty")
    block_ngram: int = option_of(DecodeConfig, "block_ngram")
    batch: int = option_of(DecodeConfig, "batch")
    device: str = option_of(ExtractConfig, "device")

    def decoding(self) -> DecodeConfig:
        """The decoding options of this evaluation."""
        return DecodeConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DecodeConfig)})


@dataclass
class SampleConfig(Checked):
    sample: str = opt("data/sample", "folder to write the clips and labels into", make="SAMPLE")
    clips_per_combination: int = opt(12, "training clips per (colour, shape, motion) combination", at_least=1,
                                     make="DEMO_CLIPS")
    test_clips_per_combination: int = opt(4, "test clips per held-out combination", at_least=1)
    held_out: int = opt(12, "combinations kept out of training: the test split", at_least=1, below=33)
    frames: int = opt(8, "frames per clip (at 8 frames/s; the features sample DEMO_FRAMES of them, repeating "
                         "frames of a shorter clip, and encode each distinct frame once)", at_least=2)
    size: int = opt(112, "frame width and height in pixels", at_least=32)
    seed: int = opt(0, "seed for everything random", make="DEMO_SEED")


@dataclass
class EvalModeConfig(Checked):
    """What `evaluate.py` does instead of evaluating a run; not part of the evaluation's config."""

    predictions: str = opt("", "a video_id,caption file to score against --references")
    out: str = opt("", "with --predictions: write the scores JSON here")
    all: bool = opt(False, "caption every video in --features into RUN/captions_all.txt")


@dataclass
class CaptionConfig(Checked):
    """`caption.py`: video files captioned straight from disk with a trained run."""

    videos: list[str] = positional(f"video files ({', '.join(VIDEO_EXTENSIONS)})")
    run_dir: str = opt(DEFAULT_RUN, "run folder", make="RUN")
    checkpoint: str = option_of(EvalConfig, "checkpoint")
    beam: int = option_of(DecodeConfig, "beam")
    device: str = option_of(ExtractConfig, "device")
    weights: tuple[str, ...] = opt((), "the weights file the run's features were made with, where they were made "
                                       "from a file; for several streams repeat it, --weights a.pt --weights b.pt "
                                       "(each file is matched to its stream by its content)")


@dataclass
class AttributesConfig(Checked):
    """`python -m pipeline.attributes`: the colour, shape and motion a run's captions of the sample set name."""

    captions: str = positional("the run's captions.txt (video_id,caption lines)")
    attributes: str = positional("the sample set's attributes.json")
    scores: str = opt("", "a scores.json to add the accuracies to")


@dataclass
class InspectConfig(Checked):
    """`python -m pipeline.store`: how a feature store was made, and whether it is valid."""

    path: str = positional("feature store (.h5)")
