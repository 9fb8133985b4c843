"""Running an upscale request: super-resolution (or Lanczos), then an optional tiled img2img refine.

1. The init image is made `factor` times larger with the super-resolution model (applied as many times as
   its own scale needs, then resized to the exact size with Lanczos), or with Lanczos alone.
2. When the request's strength is above 0, the large image is refined tile by tile: each tile is an
   ordinary img2img request at that strength on the request's engine (same prompt, seed and settings), so
   a large image needs only one tile's memory. Tiles overlap and are blended with feathered weights
   (backend/tiles.py), so no seam shows where they meet.

The events are a single run's: StepEvents (progress over every tile; the preview is the image so far, at
most PREVIEW_SIDE pixels a side), then one Done with the final image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from backend.engine import Engine
from backend.events import Done, Event, StepEvent
from backend.grid_run import expected_steps
from backend.images import Picture
from backend.request import Request
from backend.sr_models import Upscaler, sr_tile_count, super_resolve
from backend.tiles import Blender, Box, tile_boxes

PREVIEW_SIDE = 1024
PATCH_TILE = 256


def run_upscale(
    engine: Engine, upscalers: Callable[[str], Upscaler], request: Request, cancel: threading.Event
) -> Iterator[Event]:
    """Upscale `request.init_image` as `request.upscale` says, refining on `engine` with the model that
    `upscalers` loads; see the module docstring."""
    request.validate()
    u = request.upscale
    assert u is not None and request.init_image is not None
    started = time.perf_counter()
    source = request.init_image.pixels
    width, height = request.width, request.height
    preview = _Preview(width, height)
    upscaler = upscalers(u.model) if u.model else None
    passes = _passes(upscaler.scale, u.factor) if upscaler is not None else 0
    refine = request.strength > 0
    tile = (u.tile or default_tile(engine, request)) if refine else 0
    boxes = tile_boxes(width, height, tile, u.overlap, align=8) if refine else []
    scale = upscaler.scale if upscaler is not None else 1
    sizes = [(source.shape[1] * scale**k, source.shape[0] * scale**k) for k in range(passes)]
    progress = _Progress(sum(sr_tile_count(*size) for size in sizes) + len(boxes) * expected_steps(request))

    # 1. Super-resolution (or Lanczos) to the final size.
    big = source
    for _ in range(passes):
        assert upscaler is not None
        run = super_resolve(upscaler, big, cancel.is_set)
        while True:
            try:
                progress.done += next(run)
            except StopIteration as stop:
                out = stop.value
                break
            yield progress.event(request, preview, started)
        if out is None or cancel.is_set():
            return
        big = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
        preview.show(big)
    if big.shape[:2] != (height, width):
        big = np.asarray(Image.fromarray(big).resize((width, height), Image.Resampling.LANCZOS))
        preview.show(big)

    # 2. The tiled img2img refine.
    extras: dict[str, Any] = {}
    if refine:
        blender = Blender(width, height, u.overlap)
        for box in boxes:
            if cancel.is_set():
                return
            tile_request = _tile_request(request, box, big)
            before = progress.done
            finished = None
            for event in engine.generate(tile_request, cancel):
                if isinstance(event, StepEvent):
                    progress.done = before + event.step
                    if event.preview is not None:
                        preview.show(event.preview, box)
                    yield progress.event(request, preview, started)
                elif isinstance(event, Done):
                    finished = event
            if finished is None or cancel.is_set():
                return
            blender.add(box, finished.image)
            preview.show(finished.image, box)
            extras = extras or dict(finished.extras)
        big = np.clip(blender.result(fill=big) + 0.5, 0, 255).astype(np.uint8)
    if cancel.is_set():
        return
    extras["upscaler"] = upscaler.extras() if upscaler is not None else {"name": "Lanczos"}
    extras["upscale_tile"] = tile
    yield Done(request.request_id, big, request, extras, None, time.perf_counter() - started)


def default_tile(engine: Any, request: Request) -> int:
    """The engine's native size: 1024 for SDXL, 512 for SD 1/2 (or a model this side cannot look at, on a
    server), PATCH_TILE for the patch engine."""
    if request.engine == "diffusers":
        load = getattr(engine, "load", None)
        return 1024 if load is not None and load(request.model).family == "sdxl" else 512
    return PATCH_TILE


def _passes(scale: int, factor: int) -> int:
    """How many times to apply a ×scale model to reach ×factor (the last pass may overshoot)."""
    passes, reached = 0, 1
    while reached < factor:
        reached *= max(2, scale)
        passes += 1
    return passes


def _tile_request(request: Request, box: Box, image: np.ndarray) -> Request:
    """The img2img request for one tile of the large image."""
    crop = image[box.y : box.y + box.h, box.x : box.x + box.w]
    return request.replace(upscale=None, init_image=Picture(crop), width=box.w, height=box.h)


class _Progress:
    def __init__(self, total: int) -> None:
        self.done, self.total = 0, max(1, total)

    def event(self, request: Request, preview: _Preview, started: float) -> StepEvent:
        step = min(self.done, self.total)
        return StepEvent(request.request_id, step, self.total, preview.frame(), time.perf_counter() - started)


class _Preview:
    """The image so far, at most PREVIEW_SIDE pixels a side (the canvas stretches it to the document)."""

    def __init__(self, width: int, height: int) -> None:
        self.scale = min(1.0, PREVIEW_SIDE / max(width, height))
        self.size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        self.image = np.zeros((self.size[1], self.size[0], 3), dtype=np.uint8)

    def show(self, pixels: np.ndarray, box: Box | None = None) -> None:
        """Draw a whole image, or a tile's pixels at its box."""
        if box is None:
            self.image = np.asarray(Image.fromarray(pixels).resize(self.size, Image.Resampling.BILINEAR))
            return
        x0, y0 = round(box.x * self.scale), round(box.y * self.scale)
        x1, y1 = round((box.x + box.w) * self.scale), round((box.y + box.h) * self.scale)
        if x1 > x0 and y1 > y0:
            part = Image.fromarray(pixels).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
            self.image = self.image.copy()
            self.image[y0:y1, x0:x1] = np.asarray(part)

    def frame(self) -> np.ndarray:
        return self.image.copy()
