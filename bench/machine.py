"""One line describing the machine a benchmark ran on, for bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

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


def provenance() -> str:
    """When and on which commit a benchmark ran: UTC time and `git describe` (with -dirty for local edits)."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{when}, commit {commit or 'unknown'}"
