"""Feature-extraction speed: the backbone alone against the whole pipeline, and fp32
against bf16, side by side.

Reads the clips in `--clips` (default: the shared MSVD clips); writes temporary
stores only. Two benchmarks:

- `extract`: per backbone, `backbone_fps` (a freshly loaded backbone encoding the
  clips' sampled frames, already decoded in memory: resize, crop, normalise,
  network) and `pipeline_fps` (`extract()` from the files to a new store, setup
  excluded), at the default precision; `ratio` = pipeline / backbone.
- `precision`: per backbone, `fp32_fps` and `bf16_fps` of the backbone alone on
  the same frames, `speedup`, and `cosine`, the mean per-frame cosine between the
  two precisions' features.

VGG16 runs with random weights (no ImageNet file can be downloaded here; the
arithmetic is the same), EfficientNet-Lite0 with its real ImageNet weights.

    python bench/bench_extract.py [--clips DIR] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import alternate, timed  # noqa: E402

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.config import ExtractConfig, resolve_device  # noqa: E402
from pipeline.features import encode_clip, extract, find_videos  # noqa: E402
from pipeline.precision import resolve_precision  # noqa: E402
from pipeline.video import read_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIPS = ROOT.parent / "shared" / "data" / "msvd-clips"
# Per backbone: its weights here, and how many clips of 80 frames keep one repetition short on a CPU.
SETTINGS = {"vgg16": ("random", 2), "efficientnet_lite0": ("imagenet", 8)}


def _encoder(name: str, weights: str, device: torch.device, precision: str, clips: list, keep: dict | None = None):
    """A case timing a freshly loaded backbone over `clips` (so both sides pay the first-call setup);
    the features go into `keep[precision]`."""
    def case() -> float:
        backbone = load_backbone(name, weights).place(device, precision)
        out = []
        seconds = timed(lambda: out.extend(encode_clip(backbone, clip) for clip in clips), device)
        if keep is not None:
            keep[precision] = torch.from_numpy(np.concatenate(out))  # (frames, D)
        return seconds
    return case


def _pipeline(name: str, weights: str, device: torch.device, folder: Path, work: Path):
    def case() -> float:
        store = work / f"{name}.h5"
        store.unlink(missing_ok=True)
        summary = extract(ExtractConfig(raw=str(folder), features=str(store), backbone=name, weights=weights,
                                        device=str(device)))
        if summary.failed:
            raise RuntimeError(f"benchmark clips failed to extract: {summary.failed}")
        return summary.seconds - summary.setup_seconds
    return case


def run(clips_dir: Path = SHARED_CLIPS, repeats: int = 3, device: str = "auto",
        backbones: tuple[str, ...] = tuple(SETTINGS), max_clips: int = 8) -> dict:
    target = resolve_device(device)
    default = resolve_precision("auto", target)
    videos = find_videos(clips_dir)
    if not videos:
        raise FileNotFoundError(f"no clips in {clips_dir}; pass --clips DIR")
    extract_result, precision_result = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        for name in backbones:
            weights, n_clips = SETTINGS[name]
            folder = work / f"{name}-clips"
            folder.mkdir()
            for video in videos[:min(n_clips, max_clips)]:
                shutil.copy2(video, folder / video.name)
            clips = [read_clip(path, 80) for path in sorted(folder.iterdir())]
            frames = 80 * len(clips)
            seconds = alternate({"backbone": _encoder(name, weights, target, default, clips),
                                 "pipeline": _pipeline(name, weights, target, folder, work)}, repeats)
            extract_result[name] = {"backbone_fps": frames / seconds["backbone"],
                                    "pipeline_fps": frames / seconds["pipeline"], "precision": default,
                                    "clips": len(clips), "frames_per_clip": 80}
            extract_result[name]["ratio"] = extract_result[name]["pipeline_fps"] / extract_result[name]["backbone_fps"]
            few = clips[:1]  # one clip of 80 frames: fp32 VGG16 is slow on a CPU
            kept = {}
            seconds = alternate({p: _encoder(name, weights, target, p, few, kept) for p in ("fp32", "bf16")},
                                repeats)
            cosine = torch.nn.functional.cosine_similarity(kept["fp32"], kept["bf16"], dim=1).mean().item()
            precision_result[name] = {"fp32_fps": 80 / seconds["fp32"], "bf16_fps": 80 / seconds["bf16"],
                                      "speedup": seconds["fp32"] / seconds["bf16"], "cosine": cosine,
                                      "weights": weights}
    return {"extract": extract_result, "precision": precision_result, "device": str(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=SHARED_CLIPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    result = run(args.clips, args.repeats, args.device)
    for name, r in result["extract"].items():
        print(f"{name}: backbone {r['backbone_fps']:.1f} frames/s, pipeline {r['pipeline_fps']:.1f} frames/s, "
              f"ratio {r['ratio']:.2f} ({r['precision']})")
    for name, r in result["precision"].items():
        print(f"{name}: fp32 {r['fp32_fps']:.1f} frames/s, bf16 {r['bf16_fps']:.1f} frames/s, "
              f"speedup {r['speedup']:.2f}, cosine {r['cosine']:.5f}")


if __name__ == "__main__":
    main()
