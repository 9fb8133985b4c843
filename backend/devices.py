"""Pick the torch device and precision: CUDA in fp16, Apple MPS, else the CPU in fp32; both overridable."""

from __future__ import annotations

import torch

from backend.errors import StudioError

DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def pick_device(name: str | None = None) -> torch.device:
    """The named device, or the best one present: cuda, then mps, then cpu."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise StudioError(f"unknown device {name!r} ({exc})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise StudioError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise StudioError(f"device {name!r} was asked for, but Apple's MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """The named precision, or fp16 on CUDA/MPS and fp32 on the CPU (half precision is slow there)."""
    if name:
        if name not in DTYPES:
            raise StudioError(f"unknown precision {name!r}; choose one of {', '.join(sorted(DTYPES))}")
        return DTYPES[name]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def describe(device: torch.device) -> str:
    """A short human name for the device, for recipes and benchmarks."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
