"""Decides the numeric precision the networks run at: the choices, what `auto` picks, autocast.

Reads the CPU's flags (`/proc/cpuinfo`) and the GPU's capabilities; writes nothing.
`fp32` runs the networks as they are; `bf16` and `fp16` run them under autocast
(weights stay float32, matrix products and convolutions run in 16 bits). bfloat16
is faster where the hardware computes it natively: about 2x on CPUs with
AVX512-BF16 (more with AMX) and several times on CUDA GPUs from Ampere on. A CPU
without it emulates bfloat16, and asking for bf16 there warns: VGG16 ran 40x
slower than at fp32 on an AVX2-only AMD EPYC (0.5 against 3.9 frames/s). float16
is offered on CUDA only.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

from .errors import ConfigError, PipelineWarning

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what PRECISION may be for extraction
# Training offers no fp16: float16 gradients underflow without a loss scaler, which the training step does not have.
TRAINING_PRECISIONS = tuple(p for p in PRECISIONS if p != "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU flags of native bfloat16 arithmetic: x86's AVX512-BF16 and AMX, Arm's BF16 extension.
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
EMULATED_BF16 = ("this CPU has no native bfloat16 arithmetic (no AVX512-BF16, AMX or Arm BF16), so bf16 is "
                 "emulated: VGG16 ran 40x slower than at fp32 on such a CPU (an AVX2-only AMD EPYC); use fp32, "
                 "or auto to pick the faster one")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as Linux lists them in `/proc/cpuinfo` (`flags`, or `Features` on Arm);
    empty where there is no such file."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & BF16_FLAGS)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (and so runs it faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and _cpu_has_native_bf16()


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
    warn_if_emulated(name, device)
    return name


def warn_if_emulated(precision: str, device: torch.device, why: str = "") -> None:
    """Warn when `precision` is bf16 on a CPU that only emulates it (`why` says how it was chosen)."""
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(EMULATED_BF16 + why, PipelineWarning, stacklevel=3)


def runnable(made_with: str, device: torch.device) -> str:
    """The precision to reproduce features made at `made_with` on `device`: itself, or bf16 for fp16
    away from CUDA (the nearest 16-bit arithmetic a CPU has)."""
    precision = "bf16" if made_with == "fp16" and device.type != "cuda" else made_with
    warn_if_emulated(precision, device, f" (the features were made at {made_with}, and are reproduced at it)")
    return precision


def autocast(device: torch.device, precision: str, cache: bool = True):
    """A context running the networks inside it at `precision` (resolved, not `auto`); `cache` keeps
    the 16-bit copies of the weights for the context's length (off inside a CUDA graph capture)."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.bfloat16),
                          enabled=precision in AUTOCAST_DTYPES, cache_enabled=cache)
