"""Test data, fixtures and helpers, in one place: the real clips that come with the repository, the
project's shared data when it lies beside the repository, generated videos, and the commands tests run."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features import extract
from pipeline.metrics import java_available
from pipeline.store import FeatureStore, StoreSettings
from pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]
# Four real MSVD clips (H.264 in AVI, AVCC) and captions of them: they come with the repository.
CLIPS_DIR = ROOT / "tests" / "data" / "msvd-clips"
SMALL_CLIPS = [CLIPS_DIR / n for n in ("0lh_UWF9ZP4_62_69.avi", "PeUHy0A1GF0_114_121.avi",
                                       "WTf5EgVY5uU_124_128.avi", "qvg9eM4Hmzk_4_10.avi")]
# The project's shared data (../shared/data): the full MLDS labels, the MSVD standard split, MSR-VTT's
# annotations and eight real clips. CI has it beside the repository; a user's clone does not.
SHARED = ROOT.parent / "shared" / "data"
SHARED_CLIPS_DIR = SHARED / "msvd-clips"
# CI sets S2VT_TEST_EVERYTHING=1: there nothing may skip for want of the shared data, Java or Chromium, so a
# missing piece fails the tests that need it instead of hiding them.
EVERYTHING = os.environ.get("S2VT_TEST_EVERYTHING") == "1"
needs_shared = pytest.mark.skipif(not SHARED.is_dir() and not EVERYTHING,
                                  reason=f"needs the project's shared data in {SHARED} (CI has it beside the "
                                         f"repository)")
needs_java = pytest.mark.skipif(not java_available() and not EVERYTHING,
                                reason="needs Java: coco-caption's PTB tokenizer and METEOR run on it")
# The shared clips beyond the four above: 640x480 and 1280x720, 15 to 60 fps.
_SHARED_ONLY = ("778mkceE0UQ_40_46.avi", "TZ860P4iTaM_15_28.avi", "UXs3eq68ZjE_250_255.avi", "ufFT2BWh3BQ_0_8.avi")
# Every real clip, as pytest parameters: the four here always, the other four where the shared data is.
REAL_CLIPS = [pytest.param(p, id=p.name) for p in SMALL_CLIPS] + \
    [pytest.param(SHARED_CLIPS_DIR / n, id=n, marks=needs_shared) for n in _SHARED_ONLY]

# The cheapest extraction: EfficientNet-Lite0 with random weights, four frames a clip.
LITE = {"backbone": "efficientnet_lite0", "weights": "random", "frames": 4}
# A store's settings and a clip's source attributes, for tests that write stores by hand.
STORE_SETTINGS = StoreSettings(backbone="vgg16", layer="fc7 after ReLU", feature_dim=6, weights="random(seed=0)",
                               preprocessing="{}", frames=4, dtype="float32")


def source_attrs(i: int = 0) -> dict:
    """The source attributes of a made-up clip number `i`, as extraction records them."""
    return {"source_size": 100 + i, "source_mtime_ns": 10**18 + i, "n_frames": 50, "fps": 29.97,
            "indices": np.arange(4) * 12, "decoder": "opencv"}


def random_store(path: Path, ids: list[str], settings: StoreSettings = STORE_SETTINGS) -> Path:
    """A feature store holding seeded random features for `ids`, written through h5py in one go (fast for
    thousands of videos; training and evaluation read no source attributes)."""
    import h5py

    FeatureStore.open_or_create(path, settings, {})
    rng = np.random.default_rng(0)
    with h5py.File(path, "a") as f:
        for video_id in ids:
            f["features"].create_dataset(video_id, data=rng.random((settings.frames, settings.feature_dim),
                                                                   dtype=np.float32))
    return path


def lite_config(raw: Path, store: Path, **overrides) -> ExtractConfig:
    """An extraction of the clips in `raw` into `store` at the `LITE` settings, with `overrides`."""
    return ExtractConfig(**{"raw": str(raw), "features": str(store), **LITE, **overrides})


def run_make(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`make` a target of the repository, its output captured; with `check`, a failure shows that output."""
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: without it they are skipped, saying so."""
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by ../shared/gpu/check.sh)"))


def copy_clips(clips: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        shutil.copy2(clip, folder / clip.name)
    return folder


def write_index_video(path: Path, n_frames: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A lossless (FFV1) clip whose frame i is uniformly grey with value (5 * i) % 256."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25, (width, height))
    assert writer.isOpened(), "OpenCV cannot write FFV1 here"
    for i in range(n_frames):
        writer.write(np.full((height, width, 3), (5 * i) % 256, np.uint8))
    writer.release()
    return path


def write_h264_clip(path: Path, n_frames: int, size: tuple[int, int] = (128, 96), fps: int = 25,
                    pix_fmt: str = "yuv420p") -> Path:
    """An H.264 clip with B-frames (libx264 through PyAV; .mp4, .avi or .mkv by the suffix) whose every frame
    differs: a gradient moving sideways, brightening with the frame number. `pix_fmt` yuv444p makes a High
    4:4:4 clip, which NVDEC cannot decode."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.options = {"bf": "2", "g": "12", "preset": "ultrafast"}
        for i in range(n_frames):
            image = np.zeros((height, width, 3), np.uint8)  # (H, W, 3) RGB
            image[:, :, 0] = (np.arange(width) * 2 + 8 * i) % 256
            image[:, :, 1] = (5 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_main(main: Callable[[list[str]], int], *args: str) -> subprocess.CompletedProcess:
    """A stage's command line run in this process (as its script would run it, without the second or two a new
    interpreter takes to import PyTorch): its exit status, standard output and standard error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's own refusals and --help
            status = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def run_script(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a top-level script of the repository with this interpreter."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def clip_features(tmp_path_factory) -> Path:
    """Real ImageNet EfficientNet-Lite0 features of the four real clips here, 16 frames each."""
    path = tmp_path_factory.mktemp("features") / "lite_16.h5"
    summary = extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(path), backbone="efficientnet_lite0",
                                    weights="imagenet", frames=16, precision="fp32"))
    assert len(summary.done) == len(SMALL_CLIPS)
    return path


@pytest.fixture(scope="session")
def tiny_run(clip_features, tmp_path_factory):
    """A small run trained on `clip_features` until it mostly reproduces their captions."""
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(features=str(clip_features), labels=str(CLIPS_DIR / "labels.json"), run_dir=str(run), epochs=60,
                      hidden=64, embed=64, batch_size=8, captions_per_epoch="all", schedule="constant", val_fraction=0,
                      dropout=0.0, lr=3e-3, min_count=1))
    return run
