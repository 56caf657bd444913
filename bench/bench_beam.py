"""Beam-search speed on CPU: videos per second at several beam sizes, batched over
all videos against one video at a time, measured side by side in one run.

Reads nothing (an untrained S2VT shaped like the MLDS model: 80 x 4096 features,
hidden 512, vocabulary 2,891); prints a table and returns the figures.

    python bench/bench_beam.py [--videos 100] [--beams 1 3 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.decoding import DecodeConfig, beam_search  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402


def videos_per_second(model, features, beam: int, batched: bool) -> float:
    start = time.perf_counter()
    if batched:
        beam_search(model, features, DecodeConfig(beam=beam))
    else:
        for i in range(len(features)):
            beam_search(model, features[i:i + 1], DecodeConfig(beam=beam))
    return len(features) / (time.perf_counter() - start)


def run(videos: int = 100, beams=(1, 3, 5), repeats: int = 3, single_videos: int = 20) -> dict:
    torch.manual_seed(0)
    model = S2VT(S2VTConfig(feature_dim=4096, vocab_size=2891)).eval()
    features = torch.rand(videos, 80, 4096)
    result = {}
    for beam in beams:
        batched, single = [], []
        for _ in range(repeats):  # alternate the two ways
            batched.append(videos_per_second(model, features, beam, True))
            single.append(videos_per_second(model, features[:single_videos], beam, False))
        result[beam] = {"batched_vps": statistics.median(batched), "single_vps": statistics.median(single)}
        result[beam]["speedup"] = result[beam]["batched_vps"] / result[beam]["single_vps"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()
    print(f"{'beam':>4} {'batched videos/s':>17} {'one at a time':>14} {'speedup':>8}")
    for beam, r in run(args.videos, args.beams).items():
        print(f"{beam:>4} {r['batched_vps']:>17.1f} {r['single_vps']:>14.1f} {r['speedup']:>7.1f}x")


if __name__ == "__main__":
    main()
