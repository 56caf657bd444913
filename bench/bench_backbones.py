"""The rates of today's backbones (CLIP's image encoders, the Kinetics video networks): network alone
against the whole pipeline, side by side.

Reads the clips in `--clips` (as `bench_extract`); writes temporary stores only. Per backbone, at `positions`
sampled positions a clip (a feature each: a frame for CLIP, a window of 16 frames for a video network):
`network_pps` (a loaded backbone encoding clips already decoded, features per second) against `pipeline_pps`
(`extract()` from the files to a new store, setup excluded), and `ratio` = pipeline / network. Few positions
keep the benchmark inside `make bench`'s time on a 2-core CPU (ViT-L/14 and MViT-v2-S take seconds a clip
there); on a GPU every clip is copied to `gpu_copies` names. Random weights (the arithmetic is the published
weights'), the default precision. A backbone whose library is not installed (OpenCLIP on a bare GPU machine)
is reported as not measured, and the others are measured.

    python bench/bench_backbones.py [--clips DIR] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_extract import DEFAULT_CLIPS, folder_of, clip_bench_arguments  # noqa: E402
from timing import alternate, timed  # noqa: E402

from pipeline.backbones import load_backbone  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.encoding import encode_clip, read_for  # noqa: E402
from pipeline.features import extract, find_videos  # noqa: E402
from pipeline.precision import resolve_precision  # noqa: E402

NEW = ("clip_vitb32", "clip_vitb16", "clip_vitl14", "r2plus1d_18", "s3d", "mvit_v2_s")


def _rates(name: str, paths: list[Path], positions: int, repeats: int, device, work: Path) -> dict:
    backbone = load_backbone(name, "random")
    precision = resolve_precision("auto", device, auto_bf16_on_cpu=backbone.spec.cpu_bf16)
    backbone.place(device, precision)
    clips = [read_for(backbone, path, positions) for path in paths]
    encode_clip(backbone, clips[0])  # the first call pays one-time setup
    store = work / f"{name}.h5"

    def pipeline() -> float:
        store.unlink(missing_ok=True)
        summary = extract(ExtractConfig(raw=str(paths[0].parent), features=str(store), backbone=name,
                                        weights="random", frames=positions, device=str(device)))
        if summary.failed:
            raise RuntimeError(f"benchmark clips failed to extract: {summary.failed}")
        return summary.seconds - summary.setup_seconds

    seconds = alternate({"network": lambda: timed(lambda: [encode_clip(backbone, c) for c in clips], device),
                         "pipeline": pipeline}, repeats)
    features = positions * len(paths)
    row = {"network_pps": features / seconds["network"], "pipeline_pps": features / seconds["pipeline"],
           "precision": precision, "clips": len(paths), "positions": positions,
           "window": backbone.spec.window}
    return row | {"ratio": row["pipeline_pps"] / row["network_pps"]}


def run(clips_dir: Path = DEFAULT_CLIPS, repeats: int = 3, device: str = "auto", backbones: tuple = NEW,
        positions: int = 8, max_clips: int = 1, gpu_copies: int = 32) -> dict:
    target = resolve_device(device)
    videos, _ = find_videos(clips_dir)
    if not videos:
        raise FileNotFoundError(f"no clips in {clips_dir}; pass --clips DIR")
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        for name in backbones:
            work = Path(tmp) / name
            work.mkdir()
            if target.type == "cuda":
                folder = folder_of(videos, work / "clips", copies=gpu_copies)
            else:
                folder = folder_of(videos[:max_clips], work / "clips")
            try:
                result[name] = _rates(name, sorted(folder.iterdir()), positions, repeats, target, work)
            except ImportError as exc:  # a machine lacking a family's library still measures the others
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def main() -> None:
    args = clip_bench_arguments(__doc__)
    for name, r in run(args.clips, args.repeats, args.device).items():
        if "error" in r:
            print(f"{name:>12}: not measured ({r['error']})")
            continue
        print(f"{name:>12}: network {r['network_pps']:.1f}, pipeline {r['pipeline_pps']:.1f} features/s "
              f"({r['precision']}, a feature = {r['window']} frame(s)), ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
