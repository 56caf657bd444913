"""Shared fixtures: the real clips in ../shared/data and small generated videos."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import ExtractConfig, TrainConfig
from pipeline.features import extract
from pipeline.training import train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLIPS_DIR = SHARED / "msvd-clips"
ALL_CLIPS = sorted(CLIPS_DIR.glob("*.avi"))
# The four smallest real clips (240p/288p), for tests that only need a few.
SMALL_CLIPS = [CLIPS_DIR / n for n in ("0lh_UWF9ZP4_62_69.avi", "PeUHy0A1GF0_114_121.avi",
                                       "WTf5EgVY5uU_124_128.avi", "qvg9eM4Hmzk_4_10.avi")]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: without it they are skipped, saying so."""
    import torch

    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by ../shared/gpu/check.sh)"))


@pytest.fixture(scope="session", autouse=True)
def _shared_data_present():
    if len(ALL_CLIPS) != 8:
        pytest.exit(f"the tests need the 8 shared clips in {CLIPS_DIR} (../shared beside the repository)", 2)


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


def run_script(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run a top-level script of the repository with this interpreter."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def clip_features(tmp_path_factory) -> Path:
    """Real ImageNet EfficientNet-Lite0 features of the 8 shared clips, 16 frames each."""
    path = tmp_path_factory.mktemp("features") / "lite_16.h5"
    summary = extract(ExtractConfig(raw=str(CLIPS_DIR), features=str(path), backbone="efficientnet_lite0",
                                    weights="imagenet", frames=16, precision="fp32"))
    assert len(summary.done) == 8
    return path


@pytest.fixture(scope="session")
def tiny_run(clip_features, tmp_path_factory):
    """A small run trained on `clip_features` until it mostly reproduces their captions."""
    run = tmp_path_factory.mktemp("run")
    train(TrainConfig(features=str(clip_features), labels=str(CLIPS_DIR / "labels.json"), run_dir=str(run), epochs=25,
                      hidden=64, embed=64, batch_size=32, captions_per_epoch="all", schedule="constant", val_fraction=0,
                      dropout=0.0, lr=3e-3))
    return run
