"""Captions video files straight from the files with a trained run: clip -> frames -> features -> caption.

Reads the given video files and a checkpoint (`RUN/best.pt`); writes nothing, and
prints one `video_id,caption` line per video. The sampler, frame count, backbone,
weights and preprocessing are the ones the run was trained on, read from the
checkpoint; a clip that cannot be read, or whose features are not finite, is
reported and the others are captioned. Two files giving the same video id (their
file name, composed as `ids.video_id` composes it) are refused before any work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .backbones import Backbone, WeightsError, load_backbone
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import CaptionConfig, DecodeConfig, parse_config
from .decoding import caption_features
from .devices import resolve_device
from .errors import ConfigError, run_command
from .encoding import encode_clip, non_finite, read_for
from .labels import format_id_caption
from .precision import runnable
from .store import StoreSettings
from .ids import video_id
from .video import VideoError


def backbone_of(checkpoint: dict, weights_file: str) -> Backbone:
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


def caption_files(cfg: CaptionConfig) -> tuple[dict[str, str], dict[str, str]]:
    """`({video_id: caption}, {file: reason it failed})` for the files `cfg.videos`."""
    paths = [Path(video) for video in cfg.videos]
    by_id: dict[str, list[str]] = {}
    for path in paths:
        by_id.setdefault(video_id(path), []).append(str(path))
    same = {vid: files for vid, files in by_id.items() if len(files) > 1}
    if same:
        vid, files = next(iter(same.items()))
        raise ConfigError(f"{len(same)} video ids are given by several files, e.g. {vid!r} by {', '.join(files)}: "
                          f"a video's id is its file name, so caption such files in separate calls")
    decode = DecodeConfig(beam=cfg.beam)
    checkpoint = load_checkpoint(Path(cfg.run_dir) / cfg.checkpoint)
    model, vocab = model_from_checkpoint(checkpoint)
    trained_on = StoreSettings(**checkpoint["feature_settings"])  # older checkpoints: fp32 features
    target = resolve_device(cfg.device)
    backbone = backbone_of(checkpoint, cfg.weights).place(target, runnable(trained_on.precision, target))
    model.to(target)
    frames = trained_on.frames
    captions, failures = {}, {}
    for path in paths:
        try:
            clip = read_for(backbone, path, frames)
        except VideoError as exc:
            failures[str(path)] = exc.cause
            continue
        features = encode_clip(backbone, clip)  # (F, D)
        problem = non_finite(features)
        if problem:
            failures[str(path)] = problem
            continue
        captions[video_id(path)] = caption_features(model, vocab, torch.from_numpy(features)[None], target, decode)[0]
    return captions, failures


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CaptionConfig, "Caption video files with a trained run; prints video_id,caption.", argv)
    return run_command(lambda: _run(cfg))


def _run(cfg: CaptionConfig) -> int:
    captions, failures = caption_files(cfg)
    for vid, caption in captions.items():
        print(format_id_caption(vid, caption))
    for path, reason in failures.items():
        print(f"could not caption {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0
