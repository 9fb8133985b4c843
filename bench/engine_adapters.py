"""Rows for bench/bench_engine.py: a ControlNet step and a LoRA step against the plain step, and how soon a
LoRA strength change shows its first frame (issue 10: at most one step's time plus 50 ms, no reload).

All three kinds of run are interleaved in one loop so that load from other processes hits them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.diffusers_engine import DiffusersEngine
from backend.events import StepEvent
from backend.images import Picture
from backend.request import Control, Lora, Request


def _step_time(engine: DiffusersEngine, request: Request) -> float:
    """Median seconds between step events of one run (the first step's set-up left out)."""
    stamps = [e.elapsed_s for e in engine.generate(request, threading.Event()) if isinstance(e, StepEvent)]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def _first_frame(engine: DiffusersEngine, request: Request) -> float:
    """Seconds from asking for `request` to its first preview frame."""
    sync(engine.device)
    start = time.perf_counter()
    run = engine.generate(request, threading.Event())
    for event in run:
        if isinstance(event, StepEvent) and event.preview is not None:
            sync(engine.device)
            elapsed = time.perf_counter() - start
            break
    run.close()
    return elapsed


def sync(device: torch.device) -> None:
    """Wait for the GPU so wall-clock times cover its work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def adapter_rows(engine: DiffusersEngine, pipe: Any, base: Request, repeats: int) -> list[tuple[str, str]]:
    """Measure and return the table rows (name, value)."""
    from diffusers import ControlNetModel
    from tiny_models import build_tiny_controlnet, save_tiny_lora

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "controlnet"
        # Full size: the UNet's own (random) weights; a step costs the same whatever they are.
        net = build_tiny_controlnet(pipe.unet) if base.width <= 128 else ControlNetModel.from_unet(pipe.unet)
        net.save_pretrained(folder)
        del net
        lora = save_tiny_lora(pipe, Path(tmp) / "lora.safetensors")
        image = Picture(
            np.random.default_rng(0).integers(0, 256, (base.height, base.width, 3), dtype=np.uint8)
        )
        plain = base.replace(preview="none")
        controlled = plain.replace(controls=(Control(str(folder), "raw", image),))
        with_lora = plain.replace(loras=(Lora(str(lora), 0.8),))
        loads: list[object] = []
        real_load = pipe.load_lora_weights

        def counting_load(*args: Any, **kwargs: Any) -> Any:
            loads.append(args[0])
            return real_load(*args, **kwargs)

        pipe.load_lora_weights = counting_load
        try:
            for r in (plain, controlled, with_lora):  # warm-up: loading, allocator, kernels
                _step_time(engine, r)
            steps: dict[str, list[float]] = {"plain": [], "control": [], "lora": [], "lora_previews": []}
            changes: list[float] = []
            for n in range(repeats):
                steps["plain"].append(_step_time(engine, plain))
                steps["control"].append(_step_time(engine, controlled))
                steps["lora"].append(_step_time(engine, with_lora))
                # A slider move: the same request but for the LoRA's strength, previews on as in the window.
                moved = with_lora.replace(preview="latent_rgb")
                steps["lora_previews"].append(_step_time(engine, moved))
                strength = 0.3 + 0.1 * (n % 5)
                changes.append(_first_frame(engine, moved.replace(loras=(Lora(str(lora), strength),))))
        finally:
            del pipe.load_lora_weights  # the instance attribute goes; the class's method is back
    med = {k: statistics.median(v) for k, v in steps.items()}
    change = statistics.median(changes)
    budget = med["lora_previews"] + 0.050
    return [
        ("time per step, plain (no previews)", f"{med['plain'] * 1000:.2f} ms"),
        ("time per step, one ControlNet", f"{med['control'] * 1000:.2f} ms"),
        ("ControlNet step / plain step", f"{med['control'] / med['plain']:.3f}"),
        ("time per step, one LoRA (unfused)", f"{med['lora'] * 1000:.2f} ms"),
        ("LoRA step / plain step", f"{med['lora'] / med['plain']:.3f}"),
        ("LoRA strength change → first frame", f"{change * 1000:.1f} ms"),
        ("  budget: one LoRA step (previews) + 50 ms", f"{budget * 1000:.1f} ms"),
        ("  within budget", "yes" if change <= budget else "NO"),
        ("  LoRA file loads after the first", f"{len(loads) - 1}"),
    ]
