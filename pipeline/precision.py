"""Numeric precision for the backbone and for training: the choices, what `auto` picks, autocast.

Reads the CPU's and the GPU's capabilities; writes nothing. `fp32` runs the
networks as they are; `bf16` and `fp16` run them under autocast (weights stay
float32, matrix products and convolutions run in 16 bits). bfloat16 is faster
where the hardware computes it natively: about 2x on CPUs with AVX512-BF16 (more
with AMX) and several times on CUDA GPUs from Ampere on. float16 is offered on
CUDA only.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (and so runs it faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_precision(name: str, device: torch.device, allowed: tuple[str, ...] = PRECISIONS,
                      auto_bf16_on_cpu: bool = True) -> str:
    """The precision to run: `name` itself, or for `auto` bf16 where native (on a CPU only if
    `auto_bf16_on_cpu`) and fp32 otherwise."""
    if name not in allowed:
        raise ConfigError(f"precision must be one of {', '.join(allowed)}, not {name!r}")
    if name == "auto":
        return "bf16" if native_bf16(device) and (auto_bf16_on_cpu or device.type != "cpu") else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision fp16 runs on CUDA only, and the device here is {device}; "
                         f"use bf16 or fp32")
    return name


def runnable(made_with: str, device: torch.device) -> str:
    """The precision to reproduce features made at `made_with` on `device`: itself, or bf16 for fp16
    away from CUDA (the nearest 16-bit arithmetic a CPU has)."""
    return "bf16" if made_with == "fp16" and device.type != "cuda" else made_with


def autocast(device: torch.device, precision: str, cache: bool = True):
    """A context running the networks inside it at `precision` (resolved, not `auto`); `cache` keeps
    the 16-bit copies of the weights for the context's length (off inside a CUDA graph capture)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES, cache_enabled=cache)
