"""Seconds per training epoch on MLDS-shaped data: ours (fused encoder) against the
seed's step-by-step LSTMCell loop, measured side by side in one run.

Reads nothing (random features and captions shaped like MLDS: 1,450 videos x 80 x
4096, one caption each, vocabulary 2,891, batch 64, hidden 512); prints a table and
returns the figures.

    python bench/bench_train.py [--videos 1450] [--device cpu] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_s2vt import StepwiseS2VT  # noqa: E402

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.dataset import CaptionSet  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402
from pipeline.training import train_one_epoch  # noqa: E402


def mlds_shaped(videos: int, frames: int, dim: int, vocab: int, max_len: int, seed: int = 0) -> CaptionSet:
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(videos, frames, dim, generator=gen)
    lengths = torch.randint(4, max_len + 1, (videos,), generator=gen)
    tokens = torch.zeros(videos, max_len + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, n + 1] = 1, 2
        tokens[i, 1:n + 1] = torch.randint(4, vocab, (n,), generator=gen)
    ids = [f"v{i}.avi" for i in range(videos)]
    return CaptionSet(ids, features, tokens, torch.arange(videos), {})


def time_epoch(model, data, cfg, p_true: float, device) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = time.perf_counter()
    train_one_epoch(model, data, optimizer, device, 0, cfg, p_true)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(videos: int = 1450, device: str = "cpu", repeats: int = 1) -> dict:
    device = torch.device(device)
    cfg = TrainConfig(batch_size=64, hidden=512, embed=512, max_len=20)
    data = mlds_shaped(videos, 80, 4096, 2891, cfg.max_len)
    torch.manual_seed(0)
    ours = S2VT(S2VTConfig(feature_dim=4096, vocab_size=2891, max_len=cfg.max_len)).to(device)
    reference = StepwiseS2VT(4096, 2891).to(device)
    cases = {"ours, teacher forcing": (ours, 1.0), "ours, scheduled sampling": (ours, 0.5),
             "stepwise LSTMCell, scheduled sampling": (reference, 0.5)}
    times = {name: [] for name in cases}
    for _ in range(repeats):  # alternate the cases within each repetition
        for name, (model, p_true) in cases.items():
            times[name].append(time_epoch(model, data, cfg, p_true, device))
    result = {name: statistics.median(t) for name, t in times.items()}
    result["speedup"] = result["stepwise LSTMCell, scheduled sampling"] / result["ours, scheduled sampling"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1450)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    result = run(args.videos, args.device, args.repeats)
    print(f"seconds per epoch, {args.videos} videos x 80 x 4096, batch 64, hidden 512, on {args.device}:")
    for name, value in result.items():
        print(f"  {name:>40}: {value:.2f}" + ("x" if name == "speedup" else " s"))


if __name__ == "__main__":
    main()
