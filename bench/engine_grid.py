"""Rows for bench/bench_engine.py: a grid of N seeds batched through the UNet against N sequential runs
(issue 10). Both make the same N images with latent-RGB previews; the two are interleaved in one loop so
that load from other processes hits them alike.
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

from backend.diffusers_engine import DiffusersEngine
from backend.grid_run import run_grid
from backend.grids import seed_grid
from backend.request import Request


def sync(device: torch.device) -> None:
    """Wait for the GPU so wall-clock times cover its work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, run) -> float:  # noqa: ANN001 - an iterator of events
    sync(device)
    start = time.perf_counter()
    for _ in run:
        pass
    sync(device)
    return time.perf_counter() - start


def grid_rows(engine: DiffusersEngine, base: Request, repeats: int, cells: int = 4) -> list[tuple[str, str]]:
    """Measure and return the table rows (name, value)."""
    request = base.replace(preview="latent_rgb", grid=seed_grid(base.seed, cells))
    singles = [base.replace(preview="latent_rgb", seed=base.seed + i) for i in range(cells)]

    def grid() -> float:
        return _timed(engine.device, run_grid(engine, request.replace(), threading.Event()))

    def sequential() -> float:
        return sum(_timed(engine.device, engine.generate(r.replace(), threading.Event())) for r in singles)

    grid(), sequential()  # warm-up: the batch's larger kernels
    times: dict[str, list[float]] = {"grid": [], "sequential": []}
    for _ in range(repeats):
        times["grid"].append(grid())
        times["sequential"].append(sequential())
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        (f"grid of {cells} seeds, batched through the UNet", f"{med['grid'] * 1000:.1f} ms"),
        (f"{cells} sequential single runs", f"{med['sequential'] * 1000:.1f} ms"),
        (f"grid batched / {cells} sequential runs", f"{med['grid'] / med['sequential']:.3f}"),
    ]
