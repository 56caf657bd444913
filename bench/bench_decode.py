"""Exact decoding speed: every decoder reading the sampled frames of the same clips, side by side.

Reads the clips in `--clips` (default: as `bench_extract`'s); writes nothing. Each
case is `read_clip` (every frame decoded in order, the 80 sampled ones converted to
RGB) over all the clips, reported as sampled frames/s. On a CPU the CPU decoders run
one clip at a time, as extraction's decoding thread does beside a CPU backbone; the
figure is PyAV's rate over OpenCV's, which decides `DEFAULT_CPU_DECODER`. On a GPU
the clips are replicated to 128 and decoded in extraction's GPU decoding threads,
NVDEC (when available) against the default CPU decoder: the figure that would make
NVDEC `auto`'s choice there if it were above 1.

    python bench/bench_decode.py [--clips DIR] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_extract import DEFAULT_CLIPS, clip_bench_arguments  # noqa: E402
from timing import alternate, timed  # noqa: E402

from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.features import decode_workers, find_videos  # noqa: E402
from pipeline.video import (CPU_DECODERS, DEFAULT_CPU_DECODER, GPU_DECODER, nvdec_available,  # noqa: E402
                            read_clip)

FRAMES = 80
GPU_CLIPS = 128


def installed(decoder: str) -> bool:
    """Whether `decoder`'s package is importable here (decord has no wheel for some machines)."""
    module = {"pyav": "av", "opencv": "cv2", "decord": "decord"}[decoder]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _reading(paths: list[Path], decoder: str, device: torch.device, threads: int):
    """A case: `read_clip` of every path with `decoder`, in `threads` threads; checks nothing fell back."""
    def case() -> float:
        with ThreadPoolExecutor(threads) as pool:
            clips = []
            seconds = timed(lambda: clips.extend(pool.map(lambda p: read_clip(p, FRAMES, decoder, device), paths)),
                            device)
        fallen = [clip.note for clip in clips if clip.note]
        if fallen:
            raise RuntimeError(f"{len(fallen)} clips were not decoded by {decoder}: {fallen[0]}")
        return seconds
    return case


def run(clips_dir: Path = DEFAULT_CLIPS, repeats: int = 3, device: str = "auto", max_clips: int = 8) -> dict:
    target = resolve_device(device)
    videos = find_videos(clips_dir)[0][:max_clips]
    if not videos:
        raise FileNotFoundError(f"no clips in {clips_dir}; pass --clips DIR")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        if target.type == "cuda":
            paths = []
            for i in range(GPU_CLIPS):  # links, each a clip of its own name
                paths.append(Path(tmp) / f"c{i:03d}_{videos[i % len(videos)].name}")
                paths[-1].symlink_to(videos[i % len(videos)].resolve())
            threads = decode_workers(ExtractConfig(), target)
            decoders = ([GPU_DECODER] if nvdec_available() else []) + [DEFAULT_CPU_DECODER]
        else:
            paths, threads = videos, 1
            decoders = [d for d in CPU_DECODERS if installed(d)]
        seconds = alternate({d: _reading(paths, d, target, threads) for d in decoders}, repeats)
    frames = FRAMES * len(paths)
    result = {f"{d}_fps": frames / seconds[d] for d in decoders}
    result |= {"clips": len(paths), "threads": threads, "frames_per_clip": FRAMES, "device": str(target),
               "default": DEFAULT_CPU_DECODER}
    if target.type == "cuda":
        result["speedup"] = result.get(f"{GPU_DECODER}_fps", float("nan")) / result[f"{DEFAULT_CPU_DECODER}_fps"]
    else:
        result["speedup"] = result["pyav_fps"] / result["opencv_fps"]
    return result


def main() -> None:
    args = clip_bench_arguments(__doc__)
    for key, value in run(args.clips, args.repeats, args.device).items():
        print(f"  {key:>16}: {value:.1f}" if isinstance(value, float) else f"  {key:>16}: {value}")


if __name__ == "__main__":
    main()
