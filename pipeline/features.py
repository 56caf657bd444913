"""Extracts CNN features of every new or changed clip in a folder into the HDF5 feature store.

Reads every video in `cfg.raw`; writes `cfg.features` (the store, each clip under its video id: its file
name, composed as `ids.video_id` composes it), and beside it
`<stem>.config.json` (the config and the run's summary) and `<stem>.failures.json`
(`{"failed": [...], "warnings": [...]}`: each clip that failed with the reason, and
each clip extracted with a warning). Incremental: a clip already in the store with
the same size and mtime (and every source attribute) is skipped, so a second run
does only new or changed clips and retries the ones that failed. Clips are
decoded, resized and cropped in threads while the backbone encodes the previous
one (`encoding.py`), so on a CPU the run goes at about the backbone's own rate (`make bench`). On a
GPU a forward pass takes several clips' frames, and the previous pass is written
while it runs.

A clip's own problems (unreadable, not a video, truncated, features that are not
finite) make it a failure and the run goes on; anything wrong with the store or
the GPU (a write that fails, out of memory) stops the run with an error naming
what to do, and every clip finished before stays in the store. Under torchrun each rank extracts every N-th
clip still to do into its own shard (`shards.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .backbones import Backbone, get_spec, load_backbone
from .config import ExtractConfig, parse_config, print_config
from .devices import resolve_device
from .errors import ConfigError, PipelineError, run_command
from .files import ensure_writable_folder, not_a_file, write_json
from .encoding import encode_frames, frames_per_forward, non_finite, prepare_clip, read_for
from .precision import resolve_precision, runnable
from .shards import merge_ranks, open_stores
from .store import FeatureStore, StoreSettings, writer_lock
from .ids import video_id
from .video import GPU_DECODER, VIDEO_EXTENSIONS, Clip, VideoError, nvdec_available, resolve_decoder

# Devices whose forward passes take the frames of several clips at once while the previous pass's features are
# copied out and written: a GPU would otherwise idle between one clip and the next. On a CPU the rate does not
# grow with the batch, and each clip is written as soon as it is encoded.
GROUPED_DEVICES = ("cuda",)
# A clip missing more than this share of the frames its container claims fails: its features would
# describe only part of what its captions describe. Up to it, the clip is extracted from the frames that
# decode, with a warning (a broken last group of frames is common in downloaded clips).
TRUNCATION_LIMIT = 0.1


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"file": ..., "reason": ...}
    warnings: list[dict] = field(default_factory=list)  # {"file": ..., "warning": ...}: extracted all the same
    seconds: float = 0.0  # the whole run
    setup_seconds: float = 0.0  # loading the backbone and opening the store, before the first clip
    frames_encoded: int = 0
    precision: str = ""  # the precision the backbone ran at (`auto` resolved)
    decoder: str = ""  # the decoder asked for (`auto` resolved); a clip NVDEC could not decode says so in `warnings`

    def line(self) -> str:
        busy = self.seconds - self.setup_seconds
        rate = f"{len(self.done) / busy:.2f} videos/s, {self.frames_encoded / busy:.1f} frames/s" \
            if busy > 0 and self.done else "nothing to extract"
        warned = f", {len(self.warnings)} with warnings" if self.warnings else ""
        return (f"done {len(self.done)}{warned}, skipped {len(self.skipped)} (already in the store), "
                f"failed {len(self.failed)} in {self.seconds:.1f} s ({rate} after "
                f"{self.setup_seconds:.1f} s of setup, at {self.precision}, decoded by {self.decoder})")


def find_videos(raw: str | Path) -> tuple[list[Path], list[dict]]:
    """The video files directly inside `raw`, sorted by name, and as failures `{"file", "reason"}` the entries
    named like videos that are not files (a folder, a broken link) and the files whose name gives the video id
    of a file before them (two names that differ only in how their accents are encoded)."""
    raw = Path(raw)
    if raw.exists() and not raw.is_dir():
        raise ConfigError(f"RAW={raw} is a file: RAW is the folder that holds the clips")
    if not raw.is_dir():
        raise ConfigError(f"clip folder {raw} does not exist: put your .avi files there or pass RAW=...")
    videos, unusable, named = [], [], {}
    for path in sorted(p for p in raw.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS):
        reason, vid = not_a_file(path), video_id(path)
        if reason is None and vid in named:
            unusable.append({"file": str(path), "reason": f"the same video id as {named[vid]!r} (the names differ "
                             f"only in how their accents are encoded): rename or remove one"})
        elif reason is None:
            videos.append(path)
            named[vid] = path.name
        else:  # something that exists (a folder, a FIFO) is named like a video; a broken link is only a link
            unusable.append({"file": str(path), "reason": f"{reason}, named like a video" if path.exists() else
                             reason})
    return videos, unusable


def store_settings(backbone: Backbone, cfg: ExtractConfig) -> StoreSettings:
    return StoreSettings(backbone=backbone.spec.name, layer=backbone.spec.layer,
                         feature_dim=backbone.spec.feature_dim, weights=backbone.weights,
                         preprocessing=json.dumps(backbone.spec.preprocess.to_dict(), sort_keys=True),
                         frames=cfg.frames, dtype=cfg.dtype, precision=backbone.precision, window=backbone.spec.window)


def split_current(videos: list[Path], stamps: dict[str, tuple[int, int] | None]) -> tuple[list[Path], list[str]]:
    """The videos to extract (new, changed, or whose entry is not whole), and the ids of those whose entry was
    made from the file as it is now (same size and mtime), in one pass: each file is looked at once."""
    todo, current = [], []
    for path in videos:
        stamp = stamps.get(vid := video_id(path))
        if stamp is not None and stamp == ((stat := path.stat()).st_size, stat.st_mtime_ns):
            current.append(vid)
        else:
            todo.append(path)
    return todo, current


@dataclass
class Prepared:
    """A decoded clip made ready for the backbone, in a decoding thread."""

    source: dict  # the store's source attributes; size and mtime as they were before decoding
    frames: torch.Tensor  # (U, 3, crop, crop) uint8: the distinct sampled frames, resized and cropped (for a
    # video network the distinct windows, (U, window, 3, crop, crop))
    inverse: np.ndarray  # (F,) row of `frames` for each sampled frame

    @property
    def frame_count(self) -> int:
        """The frames the backbone will take: a window counts as its frames."""
        return len(self.frames) * (self.frames.shape[1] if self.frames.dim() == 5 else 1)


@dataclass
class Decoded:
    """One clip after its decoding thread: ready for the backbone, or why it cannot be."""

    path: Path
    prepared: Prepared | None = None
    failure: str | None = None  # the clip's own problem: it is not extracted
    warning: str | None = None  # extracted all the same
    unreadable: bool = False  # the file itself cannot be decoded (so older features of it are stale)


def _decode(path: Path, cfg: ExtractConfig, backbone: Backbone) -> Decoded:
    """Decode and prepare one clip (in a decoding thread); whatever goes wrong is this clip's failure, with
    the traceback kept when it is not a known way for a file to be unreadable."""
    try:
        stat = path.stat()
        clip = read_for(backbone, path, cfg.frames, cfg.decoder, backbone.device)
    except VideoError as exc:
        return Decoded(path, failure=exc.cause, unreadable=True)
    except Exception as exc:  # a decoder failing in a way we do not know: report it in full, go on
        return Decoded(path, failure=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", unreadable=True)
    missing = clip.missing_frames
    if missing > TRUNCATION_LIMIT * clip.claimed_frames:
        return Decoded(path, failure=f"truncated or damaged: only {clip.n_frames} of the {clip.claimed_frames} "
                                     f"frames its header claims decode; re-download or re-encode it",
                       unreadable=True)
    warnings = [clip.note] if clip.note else []
    if missing:
        warnings.append(f"{clip.n_frames} of the {clip.claimed_frames} frames its header claims decode (truncated?); "
                        f"extracted from those")
    return Decoded(path, Prepared(_source_attrs(stat, clip), *prepare_clip(clip, backbone)),
                   warning="; ".join(warnings) or None)


def _decoded(paths: list[Path], cfg: ExtractConfig, backbone: Backbone, pool: ThreadPoolExecutor,
             ahead: int) -> Iterator[Decoded]:
    """Each clip of `paths` decoded, in order, with `ahead` clips decoding in `pool` meanwhile."""
    queue = iter(paths)
    pending = deque(pool.submit(_decode, p, cfg, backbone) for p in islice(queue, ahead))
    while pending:
        future = pending.popleft()
        following = next(queue, None)
        if following is not None:
            pending.append(pool.submit(_decode, following, cfg, backbone))
        yield future.result()


def _source_attrs(stat: os.stat_result, clip: Clip) -> dict:
    return {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns, "n_frames": clip.n_frames,
            "fps": clip.fps, "indices": clip.indices, "decoder": clip.decoder, "claimed_frames": clip.claimed_frames}


@dataclass
class _Pass:
    """Clips whose frames went through the backbone together, and their features on the way to the host."""

    clips: list[Decoded]
    features: torch.Tensor  # (sum of the clips' distinct frames, D) float32, on the host
    copied: torch.cuda.Event | None  # recorded once the copy to the host was queued; None: it is there

    def per_clip(self) -> Iterator[tuple[Decoded, np.ndarray]]:
        """Each clip with its features `(F, D)`, once the copy has arrived."""
        if self.copied is not None:
            self.copied.synchronize()
        features, start = self.features.numpy(), 0
        for clip in self.clips:
            n = len(clip.prepared.frames)
            yield clip, features[start:start + n][clip.prepared.inverse]  # (U, D) -> (F, D)
            start += n


def _encode_pass(backbone: Backbone, clips: list[Decoded], batch: int) -> _Pass:
    """Queue one backbone pass over `clips`' frames and the copy of its features to the host; a GPU out of
    memory stops the run with the setting to lower."""
    try:
        frames = torch.cat([clip.prepared.frames.to(backbone.device, non_blocking=True) for clip in clips])
        features = encode_frames(backbone, frames, batch)  # (N, 3, crop, crop) -> (N, D)
    except torch.OutOfMemoryError:
        raise PipelineError(f"the GPU ran out of memory encoding {batch} frames at once: lower BATCH (frames per "
                            f"forward pass, e.g. BATCH={max(1, batch // 2)}); every clip finished before is in "
                            f"the store, and the next run goes on from there") from None
    if features.device.type != "cuda":
        return _Pass(clips, features, None)
    host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
    host.copy_(features, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(features.device))
    return _Pass(clips, host, copied)


class _Passes:
    """Decoded clips through the backbone and into `write`, in order. On a grouped device (a GPU) a pass
    takes consecutive clips up to `batch` frames, and the previous pass is written while it runs."""

    def __init__(self, backbone: Backbone, batch: int, write: Callable[[_Pass], None]):
        self.backbone, self.batch, self.write = backbone, batch, write
        self.grouped = backbone.device.type in GROUPED_DEVICES
        self.waiting: list[Decoded] = []  # decoded, for the next pass
        self.in_flight: _Pass | None = None  # encoded, not yet written

    def add(self, clip: Decoded) -> None:
        gathered = sum(c.prepared.frame_count for c in self.waiting)
        if self.waiting and gathered + clip.prepared.frame_count > self.batch:
            self._start()
        self.waiting.append(clip)
        if not self.grouped:
            self._start()

    def finish(self) -> None:
        """Encode what is waiting and write everything."""
        if self.waiting:
            self._start()
        self.salvage()

    def salvage(self) -> None:
        """Write the pass already encoded (after an error or an interrupt, what was computed is kept)."""
        done, self.in_flight = self.in_flight, None
        if done is not None:
            self.write(done)

    def _start(self) -> None:
        started, self.waiting = _encode_pass(self.backbone, self.waiting, self.batch), []
        if not self.grouped:
            self.write(started)
            return
        self.salvage()
        self.in_flight = started


def decode_workers(cfg: ExtractConfig, device: torch.device, processes_per_node: int = 1) -> int:
    """Decoding threads: as asked, or by default one beside a CPU backbone (which uses the other
    cores) and, feeding a GPU (which outruns one decoder many times over), one per core up to 16,
    the cores shared by the node's processes under torchrun."""
    if cfg.workers > 0:
        return cfg.workers
    return 1 if device.type == "cpu" else max(1, min(16, (os.cpu_count() or 2) // processes_per_node))


def check_options(cfg: ExtractConfig) -> tuple[torch.device, str]:
    """Refuse bad options before anything is written; returns the device and the precision to use.

    `auto` precision extends an existing store at the precision it was made with.
    """
    store = Path(cfg.features)
    if store.is_dir():
        raise ConfigError(f"FEATURES={store} is a folder: give the path of the .h5 file to create or extend, "
                          f"e.g. {store / 'vgg16_80.h5'}")
    ensure_writable_folder(store.parent, "FEATURES")
    device = resolve_device(cfg.device)
    if cfg.decoder == GPU_DECODER and (device.type != "cuda" or not nvdec_available()):
        raise ConfigError("DECODER=nvdec decodes on the GPU: it needs DEVICE=cuda, a CUDA GPU, and PyAV 18 or later "
                          "with FFmpeg's CUDA hwaccel (the PyPI wheels have it); use DECODER=auto")
    precision = resolve_precision(cfg.precision, device, auto_bf16_on_cpu=get_spec(cfg.backbone).cpu_bf16)
    if cfg.precision == "auto" and store.is_file():
        precision = runnable(FeatureStore(store).settings.precision, device)
    return device, precision


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
    device, precision = check_options(cfg)
    device = distributed.device_for(device, world)
    with writer_lock(cfg.features) if world.is_main else contextlib.nullcontext():
        # Every rank has read the store's settings, and rank 0 holds the store for this run: a second run is
        # refused before any of its ranks writes anything.
        distributed.barrier(world)
        videos, unusable = find_videos(cfg.raw)
        backbone = load_backbone(cfg.backbone, cfg.weights).place(device, precision)
        main_store, store = open_stores(cfg.features, store_settings(backbone, cfg), world)
        known = main_store.stamps()
        summary = Summary(precision=precision, decoder=resolve_decoder(cfg.decoder),
                          failed=unusable if world.is_main else [])
        todo, summary.skipped = split_current(videos, known)
        summary.setup_seconds = time.perf_counter() - start
        stale = _extract_clips(todo[world.rank::world.size], cfg, backbone, store, known, summary, world)
        summary.seconds = time.perf_counter() - start
        parts = distributed.gather((summary, stale), world)
        if world.is_main:
            merge_ranks(main_store, [v for _, part in parts for v in part], world)
        distributed.barrier(world)
    return _combined([s for s, _ in parts]) if world.distributed else summary


def _extract_clips(todo: list[Path], cfg: ExtractConfig, backbone: Backbone, store: FeatureStore, known: dict,
                   summary: Summary, world: distributed.World) -> list[str]:
    """Extract `todo` into `store`, recording each clip in `summary`; returns the ids whose stored
    features no longer describe their file (it changed, and now cannot be decoded)."""
    stale = []
    workers = decode_workers(cfg, backbone.device, world.local_size)
    batch = frames_per_forward(cfg.batch, backbone.device)
    progress = tqdm(total=len(todo), unit="video", desc="features", disable=not todo or not world.is_main)
    feeding_a_gpu = backbone.device.type in GROUPED_DEVICES and workers > 1  # a CPU backbone keeps its threads
    with _one_thread_per_cpu_op(feeding_a_gpu), ThreadPoolExecutor(workers) as pool, progress as bar:
        def failed(clip: Decoded, reason: str, stale_entry: bool) -> None:
            summary.failed.append({"file": str(clip.path), "reason": reason})
            if stale_entry and (vid := video_id(clip.path)) in known:
                stale.append(vid)
            bar.update()
            bar.set_postfix(failed=len(summary.failed))

        def write(done: _Pass) -> None:
            for clip, features in done.per_clip():
                problem = non_finite(features.astype(store.settings.dtype, copy=False))
                if problem:  # the clip's failure; features of it in the store were made from an older file
                    failed(clip, problem, stale_entry=True)
                    continue
                store.write(vid := video_id(clip.path), features, clip.prepared.source)
                summary.done.append(vid)
                summary.frames_encoded += cfg.frames
                if clip.warning:
                    summary.warnings.append({"file": str(clip.path), "warning": clip.warning})
                bar.update()

        passes = _Passes(backbone, batch, write)
        try:
            for clip in _decoded(todo, cfg, backbone, pool, ahead=workers + 1):
                if clip.failure:
                    failed(clip, clip.failure, clip.unreadable)
                else:
                    passes.add(clip)
            passes.finish()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # clips not yet started are not decoded for nothing
            with contextlib.suppress(Exception):  # the error above is the one to report
                passes.salvage()
            raise
    return stale


@contextlib.contextmanager
def _one_thread_per_cpu_op(enabled: bool):
    """While several decoding threads resize frames at once (feeding a GPU), each of PyTorch's CPU operations
    runs in one thread: a pool per thread per operation would put many times the cores' threads at work."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _combined(summaries: list[Summary]) -> Summary:
    """One summary of all ranks' (each rank saw the same skipped clips)."""
    return Summary(done=[v for s in summaries for v in s.done], skipped=summaries[0].skipped,
                   failed=[f for s in summaries for f in s.failed],
                   warnings=[w for s in summaries for w in s.warnings], seconds=max(s.seconds for s in summaries),
                   setup_seconds=max(s.setup_seconds for s in summaries),
                   frames_encoded=sum(s.frames_encoded for s in summaries), precision=summaries[0].precision,
                   decoder=summaries[0].decoder)


def _outputs(features: str) -> tuple[Path, Path]:
    store = Path(features)
    return store.with_name(store.stem + ".config.json"), store.with_name(store.stem + ".failures.json")


def main(argv: list[str] | None = None) -> int:
    with distributed.rank0_prints():  # under torchrun, rank 0 alone prints the config and the summary
        cfg = parse_config(ExtractConfig, "Extract per-frame CNN features of every clip in a folder into an HDF5 "
                           "store. Only clips that are new or changed since the last run are processed. Under "
                           "torchrun the clips are split across the processes.", argv)
        print_config("extract_features", cfg)
        return run_command(lambda: _run(cfg),
                           interrupted="every clip finished so far is in the store; run again to resume")


def _run(cfg: ExtractConfig) -> int:
    """Extract, write the summary files beside the store and print the summary; 1 if any clip failed."""
    summary = extract(cfg)
    config_path, failures_path = _outputs(cfg.features)
    if distributed.launched_rank() == 0:
        write_json(config_path, {"config": asdict(cfg), "summary": asdict(summary) | {"line": summary.line()}})
        write_json(failures_path, {"failed": summary.failed, "warnings": summary.warnings})
    print(summary.line())
    for warning in summary.warnings:
        print(f"  warning: {warning['file']}: {warning['warning']}")
    for failure in summary.failed:
        print(f"  failed: {failure['file']}: {failure['reason'].splitlines()[0]}")
    if summary.failed:
        print(f"{len(summary.failed)} clips failed (listed in {failures_path}); they are retried on the next run")
    print(f"store: {cfg.features}")
    return 1 if summary.failed else 0
