"""Working on a large image tile by tile: overlapping tiles, blended back with feathered weights.

Each tile's weight rises linearly from the edge over the overlap on every side that has a neighbour (and
stays 1 at the image border), so where two tiles overlap each fades into the other and no seam shows.
The super-resolution pass and the img2img refine of an upscale both use it (backend/upscale.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """A tile: its left, top, width and height in the image."""

    x: int
    y: int
    w: int
    h: int

    def scaled(self, factor: int) -> Box:
        """The same tile in an image `factor` times larger."""
        return Box(self.x * factor, self.y * factor, self.w * factor, self.h * factor)


def spans(length: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, size) of tiles covering `length`: `tile` long (a multiple of `align`, at most `length`),
    overlapping by at least `overlap`, the last one flush with the end."""
    size = min(tile, length)
    size = max(align, size - size % align) if size >= align else size
    if size >= length:
        return [(0, size)]
    stride = max(1, size - overlap)
    starts = list(range(0, length - size, stride)) + [length - size]
    return [(s, size) for s in dict.fromkeys(starts)]


def tile_boxes(width: int, height: int, tile: int, overlap: int, align: int = 1) -> list[Box]:
    """Tiles covering a width × height image, row by row."""
    return [
        Box(x, y, w, h)
        for y, h in spans(height, tile, overlap, align)
        for x, w in spans(width, tile, overlap, align)
    ]


def feather(box: Box, width: int, height: int, overlap: int) -> np.ndarray:
    """The tile's blending weight (h × w float32): a linear ramp over `overlap` pixels on each inner side."""

    def ramp(start: int, size: int, length: int) -> np.ndarray:
        weight = np.ones(size, dtype=np.float32)
        if overlap <= 0:
            return weight
        steps = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap  # never exactly 0
        n = min(overlap, size)
        if start > 0:
            weight[:n] = np.minimum(weight[:n], steps[:n])
        if start + size < length:
            weight[size - n :] = np.minimum(weight[size - n :], steps[:n][::-1])
        return weight

    return np.outer(ramp(box.y, box.h, height), ramp(box.x, box.w, width))


class Blender:
    """Accumulates tiles into one image by their feathered weights."""

    def __init__(self, width: int, height: int, overlap: int, channels: int = 3) -> None:
        self.width, self.height, self.overlap = width, height, overlap
        self.total = np.zeros((height, width, channels), dtype=np.float32)
        self.weight = np.zeros((height, width, 1), dtype=np.float32)

    def add(self, box: Box, pixels: np.ndarray) -> None:
        """Blend a tile's pixels (h × w × channels, any real type) in at its box."""
        w = feather(box, self.width, self.height, self.overlap)[..., None]
        self.total[box.y : box.y + box.h, box.x : box.x + box.w] += pixels.astype(np.float32) * w
        self.weight[box.y : box.y + box.h, box.x : box.x + box.w] += w

    def result(self, fill: np.ndarray | None = None) -> np.ndarray:
        """The blended image as float32; pixels no tile has reached yet come from `fill` (or are 0)."""
        covered = self.weight > 0
        out = self.total / np.where(covered, self.weight, 1.0)
        if fill is not None:
            out = np.where(covered, out, fill.astype(np.float32))
        return out
