"""Captions video files straight from the files with a trained run: clip -> frames -> features -> caption.

Reads the given video files and a checkpoint (`RUN/best.pt`); writes nothing, and
prints one `video_id,caption` line per video. The sampler, frame count, backbone,
weights and preprocessing are the ones the run was trained on, read from the
checkpoint; a clip that cannot be read is reported and the others are captioned.
Two files with the same name (the same video id) are refused before any work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .backbones import Backbone, WeightsError, load_backbone
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import DecodeConfig
from .decoding import caption_features
from .devices import resolve_device
from .errors import ConfigError, run_command
from .encoding import encode_clip
from .labels import format_id_caption
from .precision import runnable
from .store import StoreSettings
from .video import VideoError, read_clip


def backbone_of(checkpoint: dict, weights_file: str | None) -> Backbone:
    """The feature extractor the run was trained on, with the very same weights."""
    settings = checkpoint["feature_settings"]
    identity = settings["weights"]
    if identity.startswith("file:"):
        if not weights_file:
            raise WeightsError(f"the run's features were made with the weights file {identity.split(':')[1]}; "
                               f"pass it with --weights PATH")
        weights = weights_file
    else:
        weights = "random" if identity.startswith("random") else "imagenet"
    backbone = load_backbone(settings["backbone"], weights)
    problems = [name for name, ours in (("weights", backbone.weights), ("layer", backbone.spec.layer),
                ("preprocessing", json.dumps(backbone.spec.preprocess.to_dict(), sort_keys=True)))
                if ours != settings[name]]
    if problems:
        raise WeightsError(f"this installation's {settings['backbone']} differs from the run's in "
                           f"{', '.join(problems)}: its features would not be comparable")
    return backbone


def caption_files(paths: list[Path], run: str, checkpoint_name: str = "best.pt", beam: int = 5,
                  device: str = "auto", weights_file: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """`({video_id: caption}, {file: reason it failed})` for `paths`."""
    by_id: dict[str, list[str]] = {}
    for path in paths:
        by_id.setdefault(path.name, []).append(str(path))
    same = {vid: files for vid, files in by_id.items() if len(files) > 1}
    if same:
        vid, files = next(iter(same.items()))
        raise ConfigError(f"{len(same)} video ids are given by several files, e.g. {vid!r} by {', '.join(files)}: "
                          f"a video's id is its file name, so caption such files in separate calls")
    decode = DecodeConfig(beam=beam)
    checkpoint = load_checkpoint(Path(run) / checkpoint_name)
    model, vocab = model_from_checkpoint(checkpoint)
    trained_on = StoreSettings(**checkpoint["feature_settings"])  # older checkpoints: fp32 features
    target = resolve_device(device)
    backbone = backbone_of(checkpoint, weights_file).place(target, runnable(trained_on.precision, target))
    model.to(target)
    frames = trained_on.frames
    captions, failures = {}, {}
    for path in paths:
        try:
            clip = read_clip(path, frames)
        except VideoError as exc:
            failures[str(path)] = exc.cause
            continue
        features = torch.from_numpy(encode_clip(backbone, clip))[None]  # (1, F, D)
        captions[path.name] = caption_features(model, vocab, features, target, decode)[0]
    return captions, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Caption video files with a trained run; prints video_id,caption.")
    parser.add_argument("videos", nargs="+", help="video files (.avi, .mp4, .mkv, .webm, .mov)")
    parser.add_argument("--run-dir", default="runs/s2vt", help="run folder (default: runs/s2vt)")
    parser.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default: best.pt)")
    parser.add_argument("--beam", type=int, default=5, help="beam size, 1 = greedy (default: 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--weights", help="the weights file the run's features were made with, if it was a file")
    args = parser.parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    captions, failures = caption_files([Path(v) for v in args.videos], args.run_dir, args.checkpoint, args.beam,
                                       args.device, args.weights)
    for vid, caption in captions.items():
        print(format_id_caption(vid, caption))
    for path, reason in failures.items():
        print(f"could not caption {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0
