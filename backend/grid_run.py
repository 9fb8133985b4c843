"""Running a grid request: every cell through the engine (batched where it can), one mosaic preview.

The events are a single run's: StepEvents under the grid's request id, whose preview is a mosaic of every
cell's newest frame at the request's size (so a canvas shows the grid forming), then one Done whose image
is the cells side by side at full size and whose `cells` hold each cell's own Done (its image, its request
with no grid, its extras). A cancelled grid yields no Done, like any cancelled run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from backend.engine import Engine
from backend.events import Done, Event, StepEvent
from backend.grids import Grid, cells
from backend.request import Request

BACKGROUND = (40, 40, 40)


def run_grid(engine: Engine, request: Request, cancel: threading.Event) -> Iterator[Event]:
    """Run the cells of `request.grid` on `engine`; see the module docstring for the events."""
    request.validate()
    grid = request.grid
    assert grid is not None
    started = time.perf_counter()
    requests = cells(request)
    index = {cell.request_id: k for k, cell in enumerate(requests)}
    steps = [(0, expected_steps(cell)) for cell in requests]
    mosaic = Mosaic(grid, request.width, request.height)
    finished: dict[int, Done] = {}
    batch = getattr(engine, "generate_batch", None)
    events = batch(requests, cancel) if batch is not None else _one_by_one(engine, requests, cancel)
    try:
        for event in events:
            k = index.get(event.request_id)
            if k is None or cancel.is_set():
                continue
            if isinstance(event, StepEvent):
                steps[k] = (event.step, event.total)
                if event.preview is not None:
                    mosaic.put(k, event.preview)
            elif isinstance(event, Done):
                finished[k] = event
                steps[k] = (steps[k][1], steps[k][1])
                mosaic.put(k, event.image)  # a finished cell shows its image, not the last preview
                if len(finished) == len(requests):
                    break  # the grid's Done follows with every image
            done_steps, total = sum(s for s, _ in steps), sum(t for _, t in steps)
            elapsed = time.perf_counter() - started
            yield StepEvent(request.request_id, done_steps, total, mosaic.frame(), elapsed)
    finally:
        getattr(events, "close", lambda: None)()
    if cancel.is_set() or len(finished) < len(requests):
        return
    dones = tuple(finished[k] for k in range(len(requests)))
    yield Done(
        request.request_id,
        sheet(grid, [d.image for d in dones]),
        request,
        dict(dones[0].extras),
        None,
        time.perf_counter() - started,
        cells=dones,
    )


def _one_by_one(engine: Engine, requests: list[Request], cancel: threading.Event) -> Iterator[Event]:
    for cell in requests:
        if cancel.is_set():
            return
        yield from engine.generate(cell, cancel)


def expected_steps(r: Request) -> int:
    """How many steps a request will report (an init image skips the early ones); a first guess."""
    if r.init_image is None:
        return r.steps
    return max(1, min(int(r.steps * r.strength), r.steps))


def sheet(grid: Grid, images: list[np.ndarray]) -> np.ndarray:
    """The cells at full size side by side, row by row, no gaps (H·rows × W·columns × 3 uint8)."""
    columns, rows = grid.shape
    h, w = images[0].shape[:2]
    out = np.empty((h * rows, w * columns, 3), dtype=np.uint8)
    for k, (column, row) in enumerate(grid.positions()):
        out[row * h : (row + 1) * h, column * w : (column + 1) * w] = images[k]
    return out


class Mosaic:
    """A frame of the request's size holding every cell's newest picture, shrunk to fit its box."""

    def __init__(self, grid: Grid, width: int, height: int) -> None:
        self.grid = grid
        self.columns, self.rows = grid.shape
        self.box = (max(1, width // self.columns), max(1, height // self.rows))
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        self.image[:] = BACKGROUND
        self._positions = list(grid.positions())

    def put(self, k: int, picture: np.ndarray) -> None:
        """Show `picture` (H×W×3 uint8) in cell k's box, keeping its proportions."""
        bw, bh = self.box
        ph, pw = picture.shape[:2]
        scale = min(bw / pw, bh / ph)
        size = (max(1, round(pw * scale)), max(1, round(ph * scale)))
        small = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))
        column, row = self._positions[k]
        x = column * bw + (bw - size[0]) // 2
        y = row * bh + (bh - size[1]) // 2
        self.image[y : y + size[1], x : x + size[0]] = small

    def frame(self) -> np.ndarray:
        """A copy of the mosaic as it is now."""
        return self.image.copy()
