"""Where and in which arithmetic a model trains: the device and the bf16 autocast decision."""
from __future__ import annotations

import torch

from engine.training.config import TrainingError

def cpu_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AMX or AVX512-BF16).

    The one place the CPU is asked, so a test pins the answer here (``tests/conftest.py``'s ``cpu_bf16``)
    and passes on a CPU with or without it.
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (CPU: ``cpu_bf16()``; CUDA: Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16()
    return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (None: plain float32).

    bf16 autocast runs the convolutions in bfloat16 while weights, optimiser state, BatchNorm
    statistics and the loss stay float32. A CPU without native bf16 would emulate it, slower than
    float32, so 'auto' uses it only where the hardware has it (``native_bf16``; docs/BENCHMARKS.md gives the
    measured speed-up). Validation and prediction always run in float32.

    Raises:
        TrainingError: bf16 asked for on Apple MPS.
    """
    if name == "fp32" or (name == "auto" and not native_bf16(device)):
        return None
    if device.type == "mps":
        raise TrainingError("precision 'bf16' is not available on Apple MPS: set precision to fp32 or auto.")
    return torch.bfloat16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but no CUDA GPU is available: use device=auto or cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("device 'mps' was asked for but Apple's MPS is not available: use device=auto or cpu.")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """The chip a worker trains on, in words: ``cuda: NVIDIA H100 80GB HBM3``, ``cpu: AMD EPYC 7B13 (2 cores)``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}" + (" (bf16)" if native_bf16(device) else "")
    if device.type == "cpu":
        import os
        import platform

        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
        except OSError:
            pass
        return f"cpu: {name} ({os.cpu_count()} cores)" + (" (bf16)" if native_bf16(device) else "")
    return device.type
