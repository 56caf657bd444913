"""Beam-search speed: videos per second decoding all videos as one batch against one
video at a time, side by side.

Reads nothing (an untrained S2VT shaped like the MLDS model: 80 x 4096 features,
hidden 512, vocabulary 2,891); prints a table and returns the figures.

    python bench/bench_beam.py [--videos 100] [--beams 1 3 5] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import alternate, timed  # noqa: E402

from pipeline.config import DecodeConfig  # noqa: E402
from pipeline.decoding import beam_search  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402


def run(videos: int = 100, beams=(5,), repeats: int = 3, single_videos: int = 40, device: str = "auto") -> dict:
    """Per beam size: `batched_vps`, `single_vps` (on the first `single_videos`) and `speedup`."""
    target = resolve_device(device)
    torch.manual_seed(0)
    model = S2VT(S2VTConfig(feature_dim=4096, vocab_size=2891, pad_id=0, bos_id=1, eos_id=2)).to(target).eval()
    features = torch.rand(videos, 80, 4096, device=target)
    result = {}
    for beam in beams:
        decode = DecodeConfig(beam=beam)

        def one_at_a_time():
            for i in range(single_videos):
                beam_search(model, features[i:i + 1], decode)

        seconds = alternate({"batched": lambda: timed(lambda: beam_search(model, features, decode), target),
                             "single": lambda: timed(one_at_a_time, target)}, repeats)
        batched, single = videos / seconds["batched"], single_videos / seconds["single"]
        result[beam] = {"batched_vps": batched, "single_vps": single, "speedup": batched / single}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"{'beam':>4} {'batched videos/s':>17} {'one at a time':>14} {'speedup':>8}")
    for beam, r in run(args.videos, args.beams, device=args.device).items():
        print(f"{beam:>4} {r['batched_vps']:>17.1f} {r['single_vps']:>14.1f} {r['speedup']:>7.1f}x")


if __name__ == "__main__":
    main()
