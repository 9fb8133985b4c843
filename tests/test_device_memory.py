"""free_memory: a full collection only where it gives memory back (a GPU), never on a CPU-only run."""

from __future__ import annotations

import gc

import torch

from backend.device_memory import free_memory


def _collections(fn) -> int:
    seen: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(count)
    try:
        fn()
    finally:
        gc.callbacks.remove(count)
    return len(seen)


def test_on_a_cpu_nothing_is_collected():
    # A full collection costs about a second with torch loaded and holds the GIL: a failed run on a CPU
    # must not stall the window for it (and must not finalise Qt garbage on the engine thread).
    assert not torch.cuda.is_available()
    assert _collections(free_memory) == 0


def test_on_a_gpu_garbage_is_collected_then_the_cache_emptied(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    assert _collections(free_memory) == 1
    assert calls == ["empty_cache"]


def test_a_broken_driver_does_not_raise(monkeypatch):
    def broken() -> bool:
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    free_memory()
