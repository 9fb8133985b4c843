"""What an engine yields: a step event per denoising step, then one Done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.request import Request


@dataclass(frozen=True)
class StepEvent:
    """One finished denoising step with its preview (H×W×3 uint8, the clean-image estimate)."""

    request_id: str
    step: int  # 1-based: the number of steps done
    total: int
    preview: np.ndarray | None
    elapsed_s: float


@dataclass(frozen=True)
class Done:
    """The finished image (H×W×3 uint8) with the request that made it and what the engine adds to the recipe.

    `extras` holds recipe additions that are results, not inputs: model name and file hash, the patch
    engine's reference shares. `attribution` is the patch engine's per-pixel (reference index, weight) map.
    A grid's Done (backend/grid_run.py) holds each cell's own Done in `cells`; its image is the cells side
    by side.
    """

    request_id: str
    image: np.ndarray
    request: Request
    extras: dict[str, Any] = field(default_factory=dict)
    attribution: np.ndarray | None = None  # H×W×2 float32: [..., 0] reference index, [..., 1] its weight
    elapsed_s: float = 0.0
    cells: tuple[Done, ...] = ()


Event = StepEvent | Done
