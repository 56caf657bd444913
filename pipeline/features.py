"""Feature extraction: a folder of clips -> the HDF5 feature store.

Reads every video in `cfg.raw`; writes `cfg.features` (the store), and beside it
`<stem>.config.json` (the config and the run's summary) and `<stem>.failures.json`
(each clip that failed, with the reason). Incremental: a clip already in the store
with the same size and mtime is skipped, so a second run does only new or changed
clips and retries the ones that failed. One clip is decoded in a thread while the
backbone encodes the previous one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import deque
from itertools import islice
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from .backbones import Backbone, WeightsError, load_backbone
from .config import ExtractConfig, parse_config, resolve_device, write_json
from .store import FeatureStore, StoreError, StoreSettings
from .video import BACKENDS, VIDEO_EXTENSIONS, Clip, VideoError, read_clip

DECODE_AHEAD = 2  # clips decoded ahead of the backbone


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    seconds: float = 0.0
    frames_encoded: int = 0

    def line(self) -> str:
        rate = f"{len(self.done) / self.seconds:.2f} videos/s, {self.frames_encoded / self.seconds:.1f} frames/s" \
            if self.seconds > 0 and self.done else "nothing to extract"
        return (f"done {len(self.done)}, skipped {len(self.skipped)} (already in the store), "
                f"failed {len(self.failed)} in {self.seconds:.1f} s ({rate})")


def find_videos(raw: str | Path) -> list[Path]:
    """The video files directly inside `raw`, sorted by name."""
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"clip folder {raw} does not exist: put your .avi files there or pass RAW=...")
    return sorted(p for p in raw.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "h5py", "numpy", "opencv-python-headless", "decord",
                 "efficientnet-lite-pytorch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def store_settings(backbone: Backbone, cfg: ExtractConfig) -> StoreSettings:
    return StoreSettings(backbone=backbone.spec.name, layer=backbone.spec.layer,
                         feature_dim=backbone.spec.feature_dim, weights=backbone.weights,
                         preprocessing=json.dumps(backbone.spec.preprocess.to_dict(), sort_keys=True),
                         frames=cfg.frames, dtype=cfg.dtype)


def _is_current(path: Path, source: dict | None) -> bool:
    if source is None:
        return False
    stat = path.stat()
    return int(source.get("source_size", -1)) == stat.st_size and \
        int(source.get("source_mtime_ns", -1)) == stat.st_mtime_ns


@torch.inference_mode()
def encode_clip(backbone: Backbone, clip: Clip, batch: int, device: torch.device) -> np.ndarray:
    """Features `(F, D)` float32 of a clip's frames; repeated frames are encoded once."""
    unique, first, inverse = np.unique(clip.indices, return_index=True, return_inverse=True)
    frames = torch.from_numpy(clip.frames[first]).permute(0, 3, 1, 2)  # (U, 3, H, W) uint8
    chunks = [backbone.encode(frames[i:i + batch].to(device)).float().cpu()
              for i in range(0, len(unique), batch)]
    return torch.cat(chunks).numpy()[inverse]  # (U, D) -> (F, D)


def _read(path: Path, cfg: ExtractConfig) -> tuple[os.stat_result, Clip]:
    """The file's size and mtime as they were before decoding, and the decoded clip."""
    stat = path.stat()
    return stat, read_clip(path, cfg.frames, cfg.decoder)


def _decoded(paths: list[Path], cfg: ExtractConfig, pool: ThreadPoolExecutor) -> Iterator[tuple[Path, object]]:
    """Yield `(path, (stat, Clip) or the exception it raised)`, decoding ahead in `pool`."""
    queue = iter(paths)
    pending = deque((p, pool.submit(_read, p, cfg)) for p in islice(queue, DECODE_AHEAD))
    while pending:
        path, future = pending.popleft()
        following = next(queue, None)
        if following is not None:
            pending.append((following, pool.submit(_read, following, cfg)))
        try:
            yield path, future.result()
        except Exception as exc:  # recorded as this clip's failure; the run goes on
            yield path, exc


def _source_attrs(stat: os.stat_result, clip: Clip) -> dict:
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns, "n_frames": clip.n_frames,
            "fps": clip.fps, "indices": clip.indices, "decoder": clip.backend}


def check_options(cfg: ExtractConfig) -> torch.device:
    """Refuse bad options before anything is written; returns the device to use."""
    if cfg.decoder not in ("auto", *BACKENDS):
        raise ValueError(f"unknown decoder {cfg.decoder!r}; known: auto, {', '.join(BACKENDS)}")
    if cfg.dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {cfg.dtype!r}")
    if cfg.frames < 1 or cfg.batch < 1:
        raise ValueError(f"frames and batch must be at least 1 (got frames={cfg.frames}, batch={cfg.batch})")
    return resolve_device(cfg.device)


def _reason(exc: Exception) -> str:
    return exc.cause if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"


def extract(cfg: ExtractConfig) -> Summary:
    """Extract features for every new or changed clip in `cfg.raw` into `cfg.features`."""
    start = time.perf_counter()
    device = check_options(cfg)
    videos = find_videos(cfg.raw)
    backbone = load_backbone(cfg.backbone, cfg.weights)
    store = FeatureStore.open_or_create(cfg.features, store_settings(backbone, cfg), package_versions())
    known = store.sources()
    summary = Summary()
    todo = []
    for path in videos:
        if _is_current(path, known.get(path.name)):
            summary.skipped.append(path.name)
        else:
            todo.append(path)
    backbone.module.to(device)
    with ThreadPoolExecutor(1) as pool, tqdm(total=len(todo), unit="video", desc="features",
                                             disable=not todo) as bar:
        for path, result in _decoded(todo, cfg, pool):
            try:
                if isinstance(result, Exception):
                    raise result
                stat, clip = result
                store.write(path.name, encode_clip(backbone, clip, cfg.batch, device), _source_attrs(stat, clip))
                summary.done.append(path.name)
                summary.frames_encoded += len(clip.frames)
            except Exception as exc:  # a failed clip is reported, never fatal to the run
                summary.failed.append({"file": str(path), "reason": _reason(exc)})
                if path.name in known:  # its old features no longer describe the file
                    store.remove(path.name)
            bar.update()
            bar.set_postfix(failed=len(summary.failed))
    summary.seconds = time.perf_counter() - start
    return summary


def _outputs(features: str) -> tuple[Path, Path]:
    store = Path(features)
    return store.with_name(store.stem + ".config.json"), store.with_name(store.stem + ".failures.json")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExtractConfig, "extract_features",
                       "Extract per-frame CNN features of every clip in a folder into an HDF5 store. "
                       "Only clips that are new or changed since the last run are processed.", argv)
    try:
        summary = extract(cfg)
    except (WeightsError, StoreError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: every clip finished so far is in the store; run again to resume", file=sys.stderr)
        return 130
    config_path, failures_path = _outputs(cfg.features)
    write_json(config_path, {"config": asdict(cfg), "summary": asdict(summary) | {"line": summary.line()}})
    write_json(failures_path, summary.failed)
    print(summary.line())
    for failure in summary.failed:
        print(f"  failed: {failure['file']}: {failure['reason']}")
    if summary.failed:
        print(f"{len(summary.failed)} clips failed (listed in {failures_path}); they are retried on the next run")
    print(f"store: {cfg.features}")
    return 1 if summary.failed else 0
