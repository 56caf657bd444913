"""What a full MSR-VTT run costs on this machine: features, a training epoch, evaluation.

Each part is measured at MSR-VTT's sizes on a share of the work, then multiplied by MSR-VTT's counts.

Reads nothing of the repository's data; writes only in a temporary folder, and prints a table. Not part of
`make bench` (it takes several minutes at VGG16 on a CPU); run it by hand:

- **features**: `extract()` of `clips` generated clips shaped like MSR-VTT's (H.264 mp4 with B-frames,
  320 x 240, 15 s at 30 fps: its typical size and length) at 80 frames a clip, for each backbone; the seconds
  a clip, setup excluded, times 10,000 clips, plus the setup. Every backbone but EfficientNet-Lite0 (whose
  weights install with the project) runs with random weights, as in `bench_extract` (the arithmetic is the
  same): `--backbones clip_vitb32 r2plus1d_18` costs the two streams of docs/benchmarks.md's CLIP run.
- **epoch**: `steps` training steps of the default model (hidden 512, fp32 on a CPU, scheduled sampling on)
  on VGG16-shaped features (80 x 4096), batch 64, MSR-VTT's training vocabulary (10,505 words seen 3 times
  or more), times the 102 steps of an epoch over its 6,513 training videos (one caption each per epoch).
- **eval**: beam-5 captioning of `videos` of the 2,990 test videos, scaled to 2,990, and the scoring of all
  2,990 with 20 references each, model and baseline, as `make eval` scores them (synthetic captions).

    python bench/msrvtt_cost.py [--clips 4] [--steps 3] [--videos 200] [--backbones vgg16 efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_extract import WEIGHTS  # noqa: E402
from bench_scale import synthetic_captions  # noqa: E402
from bench_train import mlds_shaped  # noqa: E402
from timing import timed  # noqa: E402

from pipeline.config import DecodeConfig, ExtractConfig, TrainConfig  # noqa: E402
from pipeline.decoding import beam_search  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.features import extract  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402
from pipeline.scoring import scores_with_baseline  # noqa: E402
from pipeline.train_step import TrainStep  # noqa: E402
from pipeline.training import train_one_epoch  # noqa: E402

CLIPS, TRAIN_VIDEOS, TEST_VIDEOS, REFERENCES = 10_000, 6_513, 2_990, 20
VOCAB, BATCH, FRAMES, WIDTH, HEIGHT, FPS, SECONDS = 10_505, 64, 80, 320, 240, 30, 15


def write_msrvtt_clip(path: Path, seed: int) -> None:
    """An H.264 mp4 of MSR-VTT's shape whose every frame differs: a noisy picture drifting sideways (noise, so
    the encoder has as much to do as with a real scene)."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (HEIGHT, WIDTH * 2, 3), np.uint8)  # (H, 2W, 3) RGB
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"bf": "2", "g": "60", "preset": "veryfast"}
        for i in range(SECONDS * FPS):
            image = np.ascontiguousarray(base[:, i % WIDTH:i % WIDTH + WIDTH])
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def features_cost(work: Path, clips: int, backbone: str, device: torch.device) -> dict:
    raw = work / "clips"
    if not raw.exists():
        raw.mkdir()
        for i in range(clips):
            write_msrvtt_clip(raw / f"video{i}.mp4", i)
    summary = extract(ExtractConfig(raw=str(raw), features=str(work / f"{backbone}.h5"), backbone=backbone,
                                    weights=WEIGHTS.get(backbone, "random"), frames=FRAMES, device=str(device)))
    per_clip = (summary.seconds - summary.setup_seconds) / len(summary.done)
    return {"s_per_clip": per_clip, "setup_s": summary.setup_seconds, "precision": summary.precision,
            "total_s": summary.setup_seconds + per_clip * CLIPS}


def epoch_cost(steps: int, device: torch.device) -> dict:
    cfg = TrainConfig(batch_size=BATCH)
    data = mlds_shaped(steps * BATCH, vocab=VOCAB, max_len=cfg.max_len, device=device)
    torch.manual_seed(0)
    model = S2VT(S2VTConfig(feature_dim=4096, vocab_size=VOCAB, pad_id=0, bos_id=1, eos_id=2, max_len=cfg.max_len,
                            hidden=cfg.hidden, embed=cfg.embed)).to(device)
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), device, "fp32", 0, cfg.clip_grad,
                     BATCH, cuda_graphs=False)
    seconds = timed(lambda: train_one_epoch(step, data, 0, cfg, 0.7), device)
    steps_per_epoch = math.ceil(TRAIN_VIDEOS / BATCH)
    return {"s_per_step": seconds / steps, "steps": steps_per_epoch, "total_s": seconds / steps * steps_per_epoch}


def eval_cost(work: Path, videos: int, scored: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = S2VT(S2VTConfig(feature_dim=4096, vocab_size=VOCAB, pad_id=0, bos_id=1, eos_id=2)).to(device).eval()
    features = torch.rand(videos, FRAMES, 4096, device=device)  # (N, F, D)
    captioning = timed(lambda: beam_search(model, features, DecodeConfig(beam=5)), device) / videos * TEST_VIDEOS
    ids = [f"video{7010 + i}.mp4" for i in range(scored)]
    references = synthetic_captions(ids, REFERENCES, seed=1)
    labels = work / "train.json"
    labels.write_text(json.dumps([{"id": "a.mp4", "caption": ["a man is playing a guitar"]}]))
    start = time.perf_counter()
    scores_with_baseline({vid: caps[0] for vid, caps in synthetic_captions(ids, 1, seed=2).items()}, references,
                         labels)
    scoring = (time.perf_counter() - start) / scored * TEST_VIDEOS
    return {"captioning_s": captioning, "scoring_s": scoring, "total_s": captioning + scoring}


def run(clips: int = 4, steps: int = 3, videos: int = 200, backbones=("vgg16", "efficientnet_lite0"),
        device: str = "auto", scored: int = TEST_VIDEOS) -> dict:
    """The module's figures; `scored` test videos are scored (the time scaled to 2,990: fewer only to test
    this script)."""
    target = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="msrvtt-cost-") as tmp:
        work = Path(tmp)
        result = {"features": {b: features_cost(work, clips, b, target) for b in backbones},
                  "epoch": epoch_cost(steps, target), "eval": eval_cost(work, videos, scored, target)}
    return result | {"device": str(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="generated clips extracted per backbone")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed")
    parser.add_argument("--videos", type=int, default=200, help="test videos captioned at beam 5")
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "efficientnet_lite0"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    r = run(args.clips, args.steps, args.videos, tuple(args.backbones), args.device)
    print(f"MSR-VTT on {r['device']}: {CLIPS:,} clips, an epoch of {TRAIN_VIDEOS:,} videos, {TEST_VIDEOS:,} "
          "test videos\n| part | measured | for MSR-VTT |\n|---|---|---|")
    for name, f in r["features"].items():
        print(f"| features, {name} ({f['precision']}) | {f['s_per_clip']:.2f} s a clip, setup {f['setup_s']:.1f} s "
              f"| {f['total_s'] / 3600:.1f} h |")
    e, v = r["epoch"], r["eval"]
    print(f"| an epoch (fp32) | {e['s_per_step']:.2f} s a step of 64 | {e['total_s'] / 60:.1f} min "
          f"({e['steps']} steps) |")
    print(f"| eval, beam 5 | captioning {v['captioning_s']:.0f} s, scoring {v['scoring_s']:.0f} s "
          f"| {v['total_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
