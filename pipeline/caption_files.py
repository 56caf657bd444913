"""Captions video files straight from the files with a trained run: clip -> frames -> features -> caption.

Reads the given video files and a checkpoint (`RUN/best.pt`); writes nothing, and
prints one `video_id,caption` line per video. The sampler, frame count, backbone,
weights and preprocessing are the ones the run was trained on, read from the
checkpoint; a run trained on several feature streams has each stream extracted
from the file by its own backbone, side by side as training read them. A clip
that cannot be read, or whose features are not finite, is reported and the others
are captioned. Two files giving the same video id (their file name, composed as
`ids.video_id` composes it) are refused before any work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from .backbones import Backbone, WeightsError, file_identity, load_backbone, weights_option
from .checkpoint import load_checkpoint, model_from_checkpoint, trained_streams
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


def backbone_of(settings: StoreSettings, weights_files: dict[str, str]) -> Backbone:
    """The feature extractor a stream of the run was made with, with the very same weights (a file's found
    among `weights_files`, `{identity: path}`)."""
    identity, weights = settings.weights, weights_option(settings.weights)
    if identity.startswith("file:"):
        if identity not in weights_files:
            raise WeightsError(f"the run's {settings.backbone} features were made with the weights file {weights} "
                               f"({identity.rsplit(':', 1)[1]}); pass it with --weights PATH"
                               + (" (none of the files given is it)" if weights_files else ""))
        weights = weights_files[identity]
    backbone = load_backbone(settings.backbone, weights)
    problems = [name for name, ours, theirs in (
        ("weights", backbone.weights, settings.weights), ("layer", backbone.spec.layer, settings.layer),
        ("preprocessing", json.dumps(backbone.spec.preprocess.to_dict(), sort_keys=True), settings.preprocessing))
        if ours != theirs]
    if problems:
        raise WeightsError(f"this installation's {settings.backbone} differs from the run's in "
                           f"{', '.join(problems)}: its features would not be comparable")
    return backbone


def stream_backbones(checkpoint: dict, weights_files: tuple[str, ...], device: torch.device) -> list[Backbone]:
    """One backbone per feature stream the run was trained on, in order, placed on `device` at the precision
    its features were made with."""
    given = {file_identity(Path(path)): path for path in weights_files}
    return [backbone_of(settings, given).place(device, runnable(settings.precision, device))
            for settings in trained_streams(checkpoint)]


def clip_features(backbones: list[Backbone], streams: list[StoreSettings], path: Path) -> np.ndarray:
    """Features `(F, D_1 + D_2 + ...)` of the clip at `path`: each stream's extracted as `make features`
    extracts it (its frames or windows, its network, its stored dtype), side by side."""
    parts = []
    for backbone, settings in zip(backbones, streams):
        clip = read_for(backbone, path, settings.frames)
        parts.append(encode_clip(backbone, clip).astype(settings.dtype))  # (F, D_i), rounded as stored
    return np.concatenate(parts, axis=-1)


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
    target = resolve_device(cfg.device)
    backbones = stream_backbones(checkpoint, cfg.weights, target)
    model.to(target)
    captions, failures = {}, {}
    for path in paths:
        try:
            features = clip_features(backbones, trained_streams(checkpoint), path)  # (F, D)
        except VideoError as exc:
            failures[str(path)] = exc.cause
            continue
        problem = non_finite(features)
        if problem:
            failures[str(path)] = problem
            continue
        features = torch.from_numpy(features.astype(np.float32))[None]  # (1, F, D)
        captions[video_id(path)] = caption_features(model, vocab, features, target, decode)[0]
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
