"""One line describing the machine a benchmark ran on, for bench/RESULTS.md."""

from __future__ import annotations

import os
import platform

import torch


def describe(device: str = "cpu") -> str:
    """Platform, CPUs, GPU (when `device` is cuda), Python, torch and its threads, the load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {torch.cuda.get_device_name()}" if device == "cuda" and torch.cuda.is_available() else ""
    return (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs{gpu}, Python "
        f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {load:.1f} when it ran"
    )
