"""Feature extraction: a folder of clips -> the HDF5 feature store.

Reads every video in `cfg.raw`; writes `cfg.features` (the store), and beside it
`<stem>.config.json` (the config and the run's summary) and `<stem>.failures.json`
(each clip that failed, with the reason). Incremental: a clip already in the store
with the same size and mtime is skipped, so a second run does only new or changed
clips and retries the ones that failed. Clips are decoded, resized and cropped in
threads while the backbone encodes the previous one, so on a CPU the run goes at
about the backbone's own rate (`make bench`). Under torchrun each rank writes the
clips it extracts to its own `<stem>.shard<rank>.h5`, which rank 0 merges into the
store and deletes.
"""

from __future__ import annotations

import glob
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

from . import distributed
from .backbones import Backbone, load_backbone
from .config import ExtractConfig, parse_config, resolve_device, write_json
from .errors import ConfigError, run_command
from .precision import resolve_precision, runnable
from .store import FeatureStore, StoreError, StoreSettings
from .video import VIDEO_EXTENSIONS, Clip, VideoError, read_clip

GEOMETRY_CHUNK = 8  # frames resized at once in a decoding thread


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    seconds: float = 0.0  # the whole run
    setup_seconds: float = 0.0  # loading the backbone and opening the store, before the first clip
    frames_encoded: int = 0
    precision: str = ""  # the precision the backbone ran at (`auto` resolved)

    def line(self) -> str:
        busy = self.seconds - self.setup_seconds
        rate = f"{len(self.done) / busy:.2f} videos/s, {self.frames_encoded / busy:.1f} frames/s" \
            if busy > 0 and self.done else "nothing to extract"
        return (f"done {len(self.done)}, skipped {len(self.skipped)} (already in the store), "
                f"failed {len(self.failed)} in {self.seconds:.1f} s ({rate} after "
                f"{self.setup_seconds:.1f} s of setup, at {self.precision})")


def find_videos(raw: str | Path) -> list[Path]:
    """The video files directly inside `raw`, sorted by name."""
    raw = Path(raw)
    if not raw.is_dir():
        raise ConfigError(f"clip folder {raw} does not exist: put your .avi files there or pass RAW=...")
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
                         frames=cfg.frames, dtype=cfg.dtype, precision=backbone.precision)


def _is_current(path: Path, source: dict | None) -> bool:
    if source is None:
        return False
    stat = path.stat()
    return int(source.get("source_size", -1)) == stat.st_size and \
        int(source.get("source_mtime_ns", -1)) == stat.st_mtime_ns


@dataclass
class Prepared:
    """A decoded clip made ready for the backbone, in a decoding thread."""

    source: dict  # the store's source attributes; size and mtime as they were before decoding
    frames: torch.Tensor  # (U, 3, crop, crop) uint8: the distinct sampled frames, resized and cropped
    inverse: np.ndarray  # (F,) row of `frames` for each sampled frame


def frames_per_forward(batch: int, device: torch.device) -> int:
    """`batch`, or for 0 the measured default: 16 frames on a CPU, 80 on a GPU."""
    return batch if batch > 0 else (16 if device.type == "cpu" else 80)


def prepare_clip(clip: Clip, backbone: Backbone) -> tuple[torch.Tensor, np.ndarray]:
    """The clip's distinct frames resized and cropped `(U, 3, crop, crop)`, and the row of each sampled frame.

    Frames are resized a few at a time, so a large frame size never costs more than a few float copies."""
    _, first, inverse = np.unique(clip.indices, return_index=True, return_inverse=True)
    geometry = backbone.spec.preprocess.geometry
    frames = torch.cat([geometry(torch.from_numpy(clip.frames[first[i:i + GEOMETRY_CHUNK]]).permute(0, 3, 1, 2))
                        for i in range(0, len(first), GEOMETRY_CHUNK)])  # (U, 3, crop, crop) uint8
    return (frames.pin_memory() if backbone.device.type == "cuda" else frames), inverse


def encode_prepared(backbone: Backbone, frames: torch.Tensor, inverse: np.ndarray, batch: int) -> np.ndarray:
    """Features `(F, D)` float32: repeated frames were encoded once."""
    chunks = [backbone.encode_cropped(frames[i:i + batch]).cpu() for i in range(0, len(frames), batch)]
    return torch.cat(chunks).numpy()[inverse]  # (U, D) -> (F, D)


def encode_clip(backbone: Backbone, clip: Clip, batch: int = 0) -> np.ndarray:
    """Features `(F, D)` float32 of a clip's sampled frames, `batch` frames per forward (0: the default)."""
    return encode_prepared(backbone, *prepare_clip(clip, backbone), frames_per_forward(batch, backbone.device))


def _read(path: Path, cfg: ExtractConfig, backbone: Backbone) -> Prepared:
    stat = path.stat()
    clip = read_clip(path, cfg.frames, cfg.decoder)
    return Prepared(_source_attrs(stat, clip), *prepare_clip(clip, backbone))


def _prepared(paths: list[Path], cfg: ExtractConfig, backbone: Backbone,
              pool: ThreadPoolExecutor, ahead: int) -> Iterator[tuple[Path, object]]:
    """Yield `(path, Prepared or the exception it raised)` in order, `ahead` clips decoding in `pool`."""
    queue = iter(paths)
    pending = deque((p, pool.submit(_read, p, cfg, backbone)) for p in islice(queue, ahead))
    while pending:
        path, future = pending.popleft()
        following = next(queue, None)
        if following is not None:
            pending.append((following, pool.submit(_read, following, cfg, backbone)))
        try:
            yield path, future.result()
        except Exception as exc:  # recorded as this clip's failure; the run goes on
            yield path, exc


def _source_attrs(stat: os.stat_result, clip: Clip) -> dict:
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns, "n_frames": clip.n_frames,
            "fps": clip.fps, "indices": clip.indices, "decoder": clip.backend}


def decode_workers(cfg: ExtractConfig, device: torch.device) -> int:
    """Decoding threads: as asked, or by default one beside a CPU backbone (which uses the other
    cores) and up to 8 feeding a GPU (which outruns one decoder several times over)."""
    if cfg.workers > 0:
        return cfg.workers
    return 1 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def check_options(cfg: ExtractConfig) -> tuple[torch.device, str]:
    """Refuse bad options before anything is written; returns the device and the precision to use.

    `auto` precision extends an existing store at the precision it was made with.
    """
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.precision == "auto" and Path(cfg.features).is_file():
        precision = runnable(FeatureStore(cfg.features).settings.precision, device)
    return device, precision


def _reason(exc: Exception) -> str:
    return exc.cause if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"


def shard_path(features: str | Path, rank: int) -> Path:
    store = Path(features)
    return store.with_name(f"{store.stem}.shard{rank}{store.suffix}")


def shards_beside(features: str | Path) -> list[Path]:
    """The shard stores of torchrun ranks beside the store `features` (`<stem>.shard<rank>.h5`)."""
    store = Path(features)
    prefix = f"{store.stem}.shard"
    return sorted(p for p in store.parent.glob(glob.escape(prefix) + "*" + store.suffix)
                  if p.name[len(prefix):-len(store.suffix)].isdigit())


def merge_shards(store: FeatureStore) -> int:
    """Move the videos of every shard store beside `store` into it, deleting each shard once it is
    merged; returns how many videos moved. Safe to repeat after a crash: a video merged twice is
    simply written again."""
    return sum(store.absorb(shard) for shard in shards_beside(store.path))


def extract(cfg: ExtractConfig) -> Summary:
    """Extract features for every new or changed clip in `cfg.raw` into `cfg.features`.

    Under torchrun (`WORLD_SIZE` > 1) this is one rank: it extracts every N-th clip still to do
    into its own shard store beside `cfg.features`, and rank 0 merges the shards into it at the
    end (and, at the start, whatever shards a run that died left behind).
    """
    world = distributed.start("gloo")  # the ranks only exchange summaries and wait for each other
    try:
        return _extract(cfg, world)
    finally:
        distributed.stop(world)


def _extract(cfg: ExtractConfig, world: distributed.World) -> Summary:
    start = time.perf_counter()
    device, precision = check_options(cfg)  # every rank reads the store's precision ...
    device = distributed.device_for(device, world)
    distributed.barrier(world)  # ... before rank 0 may write to it
    videos = find_videos(cfg.raw)
    backbone = load_backbone(cfg.backbone, cfg.weights).place(device, precision)
    settings, versions = store_settings(backbone, cfg), package_versions()
    if world.is_main:
        merge_shards(FeatureStore.open_or_create(cfg.features, settings, versions))
    distributed.barrier(world)
    main_store = FeatureStore.open_or_create(cfg.features, settings, versions)
    known = main_store.sources()
    summary = Summary(precision=precision)
    todo = []
    for path in videos:
        if _is_current(path, known.get(path.name)):
            summary.skipped.append(path.name)
        else:
            todo.append(path)
    todo = todo[world.rank::world.size]
    store = FeatureStore.open_or_create(shard_path(cfg.features, world.rank), settings, versions) \
        if world.distributed else main_store
    stale = []  # failed clips whose old features no longer describe the file
    workers, batch = decode_workers(cfg, device), frames_per_forward(cfg.batch, device)
    summary.setup_seconds = time.perf_counter() - start
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), unit="video", desc="features",
                                                   disable=not todo or not world.is_main) as bar:
        for path, result in _prepared(todo, cfg, backbone, pool, ahead=workers + 1):
            try:
                if isinstance(result, Exception):
                    raise result
                features = encode_prepared(backbone, result.frames, result.inverse, batch)
                store.write(path.name, features, result.source)
                summary.done.append(path.name)
                summary.frames_encoded += cfg.frames
            except Exception as exc:  # a failed clip is reported, never fatal to the run
                summary.failed.append({"file": str(path), "reason": _reason(exc)})
                if path.name in known:
                    stale.append(path.name)
            bar.update()
            bar.set_postfix(failed=len(summary.failed))
    summary.seconds = time.perf_counter() - start
    parts = distributed.gather((summary, stale), world)
    if world.is_main:
        unseen = [r for r in range(world.size) if world.distributed and not shard_path(cfg.features, r).is_file()]
        if unseen:
            raise StoreError(f"the shards of ranks {unseen} are not visible here: under torchrun on several "
                             f"machines FEATURES must be on a filesystem they all share")
        merge_shards(main_store)
        for video_id in (v for _, part in parts for v in part):
            main_store.remove(video_id)
    distributed.barrier(world)
    return _combined([s for s, _ in parts]) if world.distributed else summary


def _combined(summaries: list[Summary]) -> Summary:
    """One summary of all ranks' (each rank saw the same skipped clips)."""
    return Summary(done=[v for s in summaries for v in s.done], skipped=summaries[0].skipped,
                   failed=[f for s in summaries for f in s.failed], seconds=max(s.seconds for s in summaries),
                   setup_seconds=max(s.setup_seconds for s in summaries),
                   frames_encoded=sum(s.frames_encoded for s in summaries), precision=summaries[0].precision)


def _outputs(features: str) -> tuple[Path, Path]:
    store = Path(features)
    return store.with_name(store.stem + ".config.json"), store.with_name(store.stem + ".failures.json")


def main(argv: list[str] | None = None) -> int:
    with distributed.rank0_prints():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    cfg = parse_config(ExtractConfig, "extract_features",
                       "Extract per-frame CNN features of every clip in a folder into an HDF5 store. "
                       "Only clips that are new or changed since the last run are processed. Under "
                       "torchrun the clips are split across the processes.", argv)
    try:
        return run_command(lambda: _run(cfg))
    except KeyboardInterrupt:
        print("\ninterrupted: every clip finished so far is in the store; run again to resume", file=sys.stderr)
        return 130


def _run(cfg: ExtractConfig) -> int:
    summary = extract(cfg)
    config_path, failures_path = _outputs(cfg.features)
    if distributed.launched_rank() == 0:
        write_json(config_path, {"config": asdict(cfg), "summary": asdict(summary) | {"line": summary.line()}})
        write_json(failures_path, summary.failed)
    print(summary.line())
    for failure in summary.failed:
        print(f"  failed: {failure['file']}: {failure['reason']}")
    if summary.failed:
        print(f"{len(summary.failed)} clips failed (listed in {failures_path}); they are retried on the next run")
    print(f"store: {cfg.features}")
    return 1 if summary.failed else 0
