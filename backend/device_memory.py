"""Giving an accelerator's memory back after a model is dropped or a run fails.

One function for the engines, the model loader, the adapters, the engine thread and the server.
"""

from __future__ import annotations

import gc
import sys


def free_memory() -> None:
    """Return what dropped models and failed runs held to the GPU (CUDA or MPS); nothing to do on a CPU.

    The caching allocators keep freed blocks until asked, and tensors held only by reference cycles (a
    failed run's traceback frames) stay until a full collection. On a CPU, tensors go back to the system
    as their last reference goes; a full collection there would only cost time (about a second with
    torch and diffusers loaded, holding the GIL, so the window would stall) and would finalise any
    garbage, Qt wrappers included, on the engine thread.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        mps_backend = getattr(torch.backends, "mps", None)
        mps = mps_backend is not None and mps_backend.is_available() and hasattr(torch, "mps")
    except Exception:  # a broken driver must not turn a clean-up into a second failure
        return
    if not (cuda or mps):
        return
    gc.collect()
    try:
        if cuda:
            torch.cuda.empty_cache()
        if mps:
            torch.mps.empty_cache()
    except Exception:  # best effort: the memory is freed by the next allocation's retry anyway
        pass
