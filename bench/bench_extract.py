"""Feature-extraction speed: the backbone alone against the whole pipeline, fp32 against bf16, side by side.

Reads the clips in `--clips` (default: the shared MSVD clips, or without them the four
real clips that come with the repository); writes temporary
stores only. Two benchmarks, per backbone:

- `extract`: `backbone_fps` (a freshly loaded backbone encoding frames already
  decoded: resize, crop, normalise, network) against `pipeline_fps` (`extract()`
  from the files to a new store, setup excluded), at the default precision;
  `ratio` = pipeline / backbone. On a CPU the number of clips is sized so a case
  takes about `CASE_SECONDS` at the backbone's measured rate, so the benchmark fits
  any 2-core machine. On a GPU the shared clips are replicated to 256, the
  backbone runs alone at batch 256, and exact decoding alone (`decode_fps`,
  sampled frames/s in the pipeline's decoding threads) is reported beside them,
  with the MSVD extraction time (1,970 clips) projected from the pipeline's rate.
  Decoding is `DECODER=auto`'s, the CPU's (NVDEC is compared in `bench_decode`).
- `precision`: the backbone alone at fp32 and at bf16 on the same frames, with
  `speedup` and `cosine` (mean per-frame cosine between the two precisions'
  features); reported as not run on a CPU without native bfloat16, where bf16 is
  emulated and about 40x slower.

VGG16 runs with random weights (no ImageNet file can be downloaded here; the
arithmetic is the same), EfficientNet-Lite0 with its real ImageNet weights.

    python bench/bench_extract.py [--clips DIR] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import alternate, timed  # noqa: E402

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.encoding import encode_clip  # noqa: E402
from pipeline.features import decode_workers, extract, find_videos  # noqa: E402
from pipeline.precision import native_bf16, resolve_precision  # noqa: E402
from pipeline.video import read_clip, resolve_decoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The eight shared MSVD clips where the project's shared data lies beside the repository, else the four that
# come with it.
SHARED_CLIPS = ROOT.parent / "shared" / "data" / "msvd-clips"
DEFAULT_CLIPS = SHARED_CLIPS if SHARED_CLIPS.is_dir() else ROOT / "tests" / "data" / "msvd-clips"
WEIGHTS = {"vgg16": "random", "efficientnet_lite0": "imagenet"}
FRAMES = 80  # frames per clip, as MLDS
CASE_SECONDS = 12.0  # what one timed case should take on a CPU
GPU_CLIPS, GPU_BATCH = 256, 256
MSVD_CLIPS = 1970


def _encoder(name: str, device: torch.device, precision: str, clips: list, keep: dict | None = None):
    """A case timing a freshly loaded backbone over `clips` (so both sides pay the first-call setup);
    the features go into `keep[precision]`."""
    def case() -> float:
        backbone = load_backbone(name, WEIGHTS[name]).place(device, precision)
        out = []
        seconds = timed(lambda: out.extend(encode_clip(backbone, clip) for clip in clips), device)
        if keep is not None:
            keep[precision] = torch.from_numpy(np.concatenate(out))  # (frames, D)
        return seconds
    return case


def _pipeline(name: str, device: torch.device, folder: Path, work: Path):
    def case() -> float:
        store = work / f"{name}.h5"
        store.unlink(missing_ok=True)
        summary = extract(ExtractConfig(raw=str(folder), features=str(store), backbone=name, weights=WEIGHTS[name],
                                        device=str(device), frames=FRAMES))
        if summary.failed:
            raise RuntimeError(f"benchmark clips failed to extract: {summary.failed}")
        return summary.seconds - summary.setup_seconds
    return case


def _clips_for_a_case(name: str, device: torch.device, precision: str, sample) -> int:
    """How many clips of 80 frames make a case of about CASE_SECONDS at this backbone's rate here."""
    backbone = load_backbone(name, WEIGHTS[name]).place(device, precision)
    encode_clip(backbone, sample)  # the first call pays one-time setup
    seconds = timed(lambda: encode_clip(backbone, sample), device)
    return int(np.clip(round(CASE_SECONDS / seconds), 1, 8))


def folder_of(videos: list[Path], folder: Path, copies: int = 1) -> Path:
    """`folder` holding `videos` `copies` times over (links, each a clip of its own name)."""
    folder.mkdir()
    for copy in range(copies):
        for video in videos:
            (folder / (f"c{copy:03d}_{video.name}" if copies > 1 else video.name)).symlink_to(video.resolve())
    return folder


def _precision_row(name: str, device: torch.device, few: list, repeats: int) -> dict:
    if device.type == "cpu" and not native_bf16(device):
        return {"not_run": "this CPU has no native bfloat16 (no AVX512-BF16 or AMX): bf16 is emulated there and "
                           "about 40x slower than fp32, so it is not compared"}
    kept = {}
    seconds = alternate({p: _encoder(name, device, p, few, kept) for p in ("fp32", "bf16")}, repeats)
    frames = FRAMES * len(few)
    cosine = torch.nn.functional.cosine_similarity(kept["fp32"], kept["bf16"], dim=1).mean().item()
    return {"fp32_fps": frames / seconds["fp32"], "bf16_fps": frames / seconds["bf16"],
            "speedup": seconds["fp32"] / seconds["bf16"], "cosine": cosine, "weights": WEIGHTS[name]}


def _on_cpu(name: str, videos: list[Path], repeats: int, device: torch.device, work: Path, max_clips: int) -> tuple:
    default = resolve_precision("auto", device)
    sample = read_clip(videos[0], FRAMES)
    n_clips = min(_clips_for_a_case(name, device, default, sample), max_clips, len(videos))
    folder = folder_of(videos[:n_clips], work / f"{name}-clips")
    clips = [read_clip(path, FRAMES) for path in sorted(folder.iterdir())]
    seconds = alternate({"backbone": _encoder(name, device, default, clips),
                         "pipeline": _pipeline(name, device, folder, work)}, repeats)
    frames = FRAMES * len(clips)
    row = {"backbone_fps": frames / seconds["backbone"], "pipeline_fps": frames / seconds["pipeline"],
           "precision": default, "clips": len(clips), "frames_per_clip": FRAMES}
    return row | {"ratio": row["pipeline_fps"] / row["backbone_fps"]}, _precision_row(name, device, clips[:1], repeats)


def _batch_of_frames(name: str, device: torch.device, videos: list[Path]) -> torch.Tensor:
    """GPU_BATCH real frames, resized and cropped, on the device: (GPU_BATCH, 3, crop, crop) uint8."""
    geometry = load_backbone(name, WEIGHTS[name]).spec.preprocess.geometry
    # each clip resized and cropped on its own: the clips' frame sizes differ
    cropped = torch.cat([geometry(torch.from_numpy(read_clip(v, FRAMES).frames).permute(0, 3, 1, 2))
                         for v in videos])  # (N, 3, crop, crop)
    return cropped.repeat(-(-GPU_BATCH // len(cropped)), 1, 1, 1)[:GPU_BATCH].to(device)


def _network_alone(name: str, device: torch.device, precision: str, batch: torch.Tensor, keep: dict):
    def case() -> float:
        backbone = load_backbone(name, WEIGHTS[name]).place(device, precision)
        keep[precision] = backbone.encode_cropped(batch).float()  # the first call pays one-time setup
        return timed(lambda: [backbone.encode_cropped(batch) for _ in range(10)], device) / 10
    return case


def _decoding_alone(folder: Path, device: torch.device):
    """Exact decoding with the decoder extraction uses on `device`, in extraction's decoding threads."""
    paths = sorted(folder.iterdir())

    def case() -> float:
        with ThreadPoolExecutor(decode_workers(ExtractConfig(), device)) as pool:
            return timed(lambda: list(pool.map(lambda p: read_clip(p, FRAMES, "auto", device), paths)), device)
    return case


def _on_gpu(name: str, videos: list[Path], repeats: int, device: torch.device, work: Path) -> tuple:
    default = resolve_precision("auto", device)
    folder = folder_of(videos, work / f"{name}-clips", copies=-(-GPU_CLIPS // len(videos)))
    batch, kept = _batch_of_frames(name, device, videos), {}
    seconds = alternate({"backbone": _network_alone(name, device, default, batch, kept),
                         "decoding": _decoding_alone(folder, device),
                         "pipeline": _pipeline(name, device, folder, work)}, repeats)
    n_clips = len(list(folder.iterdir()))
    frames = FRAMES * n_clips
    row = {"backbone_fps": GPU_BATCH / seconds["backbone"], "decode_fps": frames / seconds["decoding"],
           "pipeline_fps": frames / seconds["pipeline"], "precision": default, "clips": n_clips,
           "frames_per_clip": FRAMES, "backbone_batch": GPU_BATCH, "decoder": resolve_decoder("auto"),
           "msvd_projected_s": MSVD_CLIPS * seconds["pipeline"] / n_clips}
    row["ratio"] = row["pipeline_fps"] / row["backbone_fps"]
    other = "fp32" if default == "bf16" else "bf16"
    fp32_vs_bf16 = alternate({p: _network_alone(name, device, p, batch, kept) for p in (other, default)}, repeats)
    cosine = torch.nn.functional.cosine_similarity(kept["fp32"], kept["bf16"], dim=1).mean().item()
    precision = {"fp32_fps": GPU_BATCH / fp32_vs_bf16["fp32"], "bf16_fps": GPU_BATCH / fp32_vs_bf16["bf16"],
                 "speedup": fp32_vs_bf16["fp32"] / fp32_vs_bf16["bf16"], "cosine": cosine,
                 "weights": WEIGHTS[name]}
    return row, precision


def run(clips_dir: Path = DEFAULT_CLIPS, repeats: int = 3, device: str = "auto",
        backbones: tuple[str, ...] | None = None, max_clips: int = 8) -> dict:
    target = resolve_device(device)
    videos, _ = find_videos(clips_dir)
    if not videos:
        raise FileNotFoundError(f"no clips in {clips_dir}; pass --clips DIR")
    backbones = backbones or (("vgg16",) if target.type == "cuda" else tuple(WEIGHTS))
    extract_result, precision_result = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        for name in backbones:
            began = time.perf_counter()
            work = Path(tmp) / name
            work.mkdir()
            if target.type == "cuda":
                extract_result[name], precision_result[name] = _on_gpu(name, videos, repeats, target, work)
            else:
                extract_result[name], precision_result[name] = _on_cpu(name, videos, repeats, target, work,
                                                                        max_clips)
            extract_result[name]["bench_seconds"] = time.perf_counter() - began
            shutil.rmtree(work)
    return {"extract": extract_result, "precision": precision_result, "device": str(target)}


def clip_bench_arguments(doc: str) -> argparse.Namespace:
    """The command line of a benchmark over clips (`--clips`, `--repeats`, `--device`), described by the first
    paragraph of its docstring `doc`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def main() -> None:
    args = clip_bench_arguments(__doc__)
    result = run(args.clips, args.repeats, args.device)
    for name, r in result["extract"].items():
        print(f"{name}: backbone {r['backbone_fps']:.1f} frames/s, pipeline {r['pipeline_fps']:.1f} frames/s, "
              f"ratio {r['ratio']:.2f} ({r['precision']}, {r['clips']} clips)")
    for name, r in result["precision"].items():
        print(f"{name}: " + (r["not_run"] if "not_run" in r else
                             f"fp32 {r['fp32_fps']:.1f} frames/s, bf16 {r['bf16_fps']:.1f} frames/s, speedup "
                             f"{r['speedup']:.2f}, cosine {r['cosine']:.5f}"))


if __name__ == "__main__":
    main()
