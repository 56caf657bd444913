"""Peak memory of extracting a short clip against a long one of the same resolution.

Writes two generated clips (MJPG `.avi`, 1280 x 720 by default: 10 s and 60 s at
30 fps) into a temporary folder, then extracts each in a fresh process and reads
that process's peak resident memory. Decoding keeps only the sampled frames, so
the long clip should cost what the short one does: `ratio` = long / short.

    python bench/bench_memory.py [--seconds 10 60] [--size 1280 720]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FPS = 30


def write_clip(path: Path, seconds: int, width: int, height: int) -> None:
    """A colour gradient scrolling sideways, so every frame differs."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)  # (H, W, 3)
    for i in range(seconds * FPS):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()


def peak_rss_mb(folder: Path, store: Path) -> float:
    """Peak RSS (MB) of a fresh process extracting `folder` with EfficientNet-Lite0 at 80 frames, on the CPU
    (what decoding holds does not depend on where the network runs)."""
    child = (f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
             "from pipeline.config import ExtractConfig\nfrom pipeline.features import extract\n"
             f"s = extract(ExtractConfig(raw={str(folder)!r}, features={str(store)!r}, "
             "backbone='efficientnet_lite0', weights='imagenet', device='cpu'))\n"
             "assert len(s.done) == 1, s.failed\n"
             # VmHWM is this process's own peak; ru_maxrss can carry the parent's over fork and exec
             "status = open('/proc/self/status').read() if sys.platform == 'linux' else ''\n"
             "hwm = [line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:')]\n"
             "print(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024  # both in KB on Linux


def run(seconds: tuple[int, int] = (10, 60), size: tuple[int, int] = (1280, 720)) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        result = {}
        for name, length in zip(("short", "long"), seconds):
            folder = Path(tmp) / name
            folder.mkdir()
            write_clip(folder / f"{name}.avi", length, *size)
            result[f"{name}_mb"] = peak_rss_mb(folder, Path(tmp) / f"{name}.h5")
            result[f"{name}_seconds"] = length
    result["ratio"] = result["long_mb"] / result["short_mb"]
    result["resolution"] = f"{size[0]}x{size[1]}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, nargs=2, default=[10, 60])
    parser.add_argument("--size", type=int, nargs=2, default=[1280, 720])
    args = parser.parse_args()
    print(json.dumps(run(tuple(args.seconds), tuple(args.size)), indent=2))


if __name__ == "__main__":
    main()
