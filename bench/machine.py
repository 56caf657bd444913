"""Describes the machine a benchmark ran on, for `results.json`.

Reads `/proc/cpuinfo` and what torch reports; writes nothing. Figures differ between
machines (a CPU with native bfloat16 or without, a GPU), so every result names its
machine: the CPU model, its cores, whether it computes bfloat16 natively, the GPU
and the torch version.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.precision import cpu_flags, native_bf16  # noqa: E402


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def describe() -> dict:
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_native_bf16": native_bf16(torch.device("cpu")),
            "cpu_isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None}
