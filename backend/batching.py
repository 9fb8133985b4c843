"""Which requests can share one pass through the UNet, and how many fit at once.

Requests batch together when they differ only in what is per image inside the loop: seed, variation noise,
prompts and blend, guidance (as long as all or none use classifier-free guidance) and concept weights. The
schedule (steps, scheduler, strength), the size, the init image and mask, tiling and the model must agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch

from backend.request import Request

# Activation memory of one image's UNet pass at 512² (both halves of guidance), fp16, with headroom; it
# scales with the pixel count. Only a first guess: a batch that still runs out of memory is halved.
BYTES_PER_IMAGE_512 = 1.5 * 2**30
MAX_BATCH = 16


def batch_key(r: Request) -> Request:
    """The request with everything that may differ within a batch set to one value."""
    return r.replace(
        request_id="",
        prompt="",
        negative_prompt="",
        prompt_b="",
        blend=0.0,
        seed=0,
        variation_seed=None,
        variation_strength=0.0,
        guidance=2.0 if r.guidance > 1.0 else 1.0,
        concepts=tuple(dataclasses.replace(c, weight=0.0) for c in r.concepts),
        grid=None,
    )


def batch_groups(requests: Sequence[Request], limit: int) -> list[list[Request]]:
    """The requests in groups that can run as one batch, each at most `limit` long, in first-seen order."""
    by_key: dict[Request, list[Request]] = {}
    for r in requests:
        by_key.setdefault(batch_key(r), []).append(r)
    limit = max(1, limit)
    return [group[i : i + limit] for group in by_key.values() for i in range(0, len(group), limit)]


def batch_limit(device: torch.device, width: int, height: int, dtype: torch.dtype) -> int:
    """How many images of this size to put through the UNet at once on `device` (a first guess)."""
    per_image = BYTES_PER_IMAGE_512 * (width * height) / (512 * 512)
    if dtype == torch.float32:
        per_image *= 2
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _available_ram()
    return int(max(1, min(MAX_BATCH, free // max(per_image, 1))))


def _available_ram() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable; half the total elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size // 2


def per_request(
    values: Sequence[float], device: torch.device, dtype: torch.dtype, dims: int = 0
) -> float | torch.Tensor:
    """One number for the batch when every request has the same (the single run's arithmetic exactly),
    else a column of them shaped to broadcast over a batch of tensors with `dims` more dimensions."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(list(values), dtype=dtype, device=device).view(-1, *([1] * dims))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the GPU's OutOfMemoryError and the CPU allocator's RuntimeError."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("allocate" in text or "out of memory" in text)
    )
