"""Seconds per training epoch on MLDS-shaped data with scheduled sampling on: ours
against the seed's step-by-step LSTMCell loop (`reference_s2vt.py`), side by side.

Reads nothing: random features and captions shaped like MLDS (80 x 4096 per video,
captions up to 20 words, vocabulary 2,891), batch 64, hidden 512. On a CPU each
case trains `steps` batches per repetition and the time is scaled to MLDS's
1,450-video epoch (23 batches), so the benchmark fits in `make bench`; on a GPU
(or with `--steps 23`) whole epochs are timed, ours with its steps replayed from
CUDA graphs as `train` runs them: the graph is captured in the first repetition,
so the median of 3 is a replayed epoch. On a GPU one more replayed epoch of ours
runs under `torch.profiler`: `profile` gives its wall time, the time the GPU was
busy, and the host operations that took the most time, to tell a host-bound
epoch from a GPU-bound one.

    python bench/bench_train.py [--steps 4] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_s2vt import StepwiseS2VT  # noqa: E402
from timing import alternate, timed  # noqa: E402

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.dataset import CaptionSet  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.model import S2VT, S2VTConfig  # noqa: E402
from pipeline.precision import TRAINING_PRECISIONS, native_bf16, resolve_precision  # noqa: E402
from pipeline.train_step import TrainStep  # noqa: E402
from pipeline.training import train_one_epoch  # noqa: E402

MLDS_VIDEOS, BATCH, TEACHER_FORCING = 1450, 64, 0.7  # mid-way through the seed's schedule


def mlds_shaped(videos: int, frames: int = 80, dim: int = 4096, vocab: int = 2891, max_len: int = 20,
                seed: int = 0, device: torch.device = torch.device("cpu")) -> CaptionSet:
    """Random features and captions shaped like MLDS, held on `device` as `train` holds them."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(videos, frames, dim, generator=gen)
    lengths = torch.randint(4, max_len + 1, (videos,), generator=gen)
    tokens = torch.zeros(videos, max_len + 2, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, n + 1] = 1, 2
        tokens[i, 1:n + 1] = torch.randint(4, vocab, (n,), generator=gen)
    return CaptionSet([f"v{i}.avi" for i in range(videos)], features.to(device), tokens.to(device),
                      torch.arange(videos, device=device), {}, 0)


def run(steps: int = 4, repeats: int = 3, device: str = "auto") -> dict:
    target = resolve_device(device)
    if target.type == "cuda":
        steps = math.ceil(MLDS_VIDEOS / BATCH)
    cfg = TrainConfig(batch_size=BATCH, hidden=512, embed=512, max_len=20)
    data = mlds_shaped(min(steps * BATCH, MLDS_VIDEOS), device=target)
    torch.manual_seed(0)
    ours = S2VT(S2VTConfig(feature_dim=4096, vocab_size=2891, pad_id=0, bos_id=1, eos_id=2)).to(target)
    reference = StepwiseS2VT(4096, 2891).to(target)
    default = resolve_precision(cfg.precision, target, TRAINING_PRECISIONS, auto_bf16_on_cpu=False)
    scale = math.ceil(MLDS_VIDEOS / BATCH) / steps

    def case(model, precision):
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        step = TrainStep(model, optimizer, target, precision, 0, cfg.clip_grad, BATCH, cuda_graphs=model is ours)
        return lambda: scale * timed(lambda: train_one_epoch(step, data, 0, cfg, TEACHER_FORCING), target)

    cases = {"ours": case(ours, default), "reference": case(reference, default)}
    if default == "fp32" and native_bf16(target):
        cases["ours_bf16"] = case(ours, "bf16")
    seconds = alternate(cases, repeats)
    result = {"ours_s_per_epoch": seconds["ours"], "reference_s_per_epoch": seconds["reference"],
              "speedup": seconds["reference"] / seconds["ours"], "precision": default,
              "device": str(target), "steps_timed": steps, "whole_epoch": steps * BATCH >= MLDS_VIDEOS}
    if target.type == "cuda":
        result["profile"] = profile_epoch(cases["ours"])
    if "ours_bf16" in seconds:
        result |= {"ours_bf16_s_per_epoch": seconds["ours_bf16"],
                   "bf16_speedup": seconds["reference"] / seconds["ours_bf16"]}
    return result


def profile_epoch(epoch) -> dict:
    """One more replayed epoch under `torch.profiler`: its wall seconds, the seconds the GPU ran kernels,
    and the host operations with the most time of their own (what a host-bound epoch spends its time on)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = epoch()
    events = prof.key_averages()
    # the kernels' own entries only: an operator's entry carries its kernels' time again
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA
                 and not e.is_user_annotation)
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"wall_s": wall, "gpu_busy_s": gpu_us / 1e6,
            "top_host_ops_ms": {e.key: round(e.self_cpu_time_total / 1e3, 2) for e in host}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="batches timed per case and repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for key, value in run(args.steps, args.repeats, args.device).items():
        if isinstance(value, dict):
            print(f"  {key:>24}: {value}")
            continue
        print(f"  {key:>24}: {value:.2f}" if isinstance(value, float) else f"  {key:>24}: {value}")


if __name__ == "__main__":
    main()
