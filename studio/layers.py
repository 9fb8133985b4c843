"""Layers: straight-alpha RGBA pixels at their own size and place, shared copy-on-write between copies.

Pixels live in numpy arrays so the model needs no QtGui; the canvas widget turns them into images.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_revisions = itertools.count(1)


def new_id() -> str:
    """A fresh opaque id for layers and results."""
    return uuid.uuid4().hex[:16]


def writable(pixels: np.ndarray) -> np.ndarray:
    """`pixels` itself when it may be written, else a private copy (copy-on-write of shared arrays)."""
    return pixels if pixels.flags.writeable else pixels.copy()


def shared(pixels: np.ndarray) -> np.ndarray:
    """Mark an array read-only so two owners can hold it; the first to write copies it (`writable`)."""
    pixels.setflags(write=False)
    return pixels


@dataclass
class Layer:
    """One layer: straight-alpha RGBA pixels at their own size, placed at (x, y) on the canvas.

    A layer holds only the rectangle it covers (an imported OpenRaster layer may be far smaller than the
    canvas); outside it the layer is transparent. Pixel arrays may be shared read-only between copies of
    a layer (a save's snapshot, a duplicate, the undo stack): change them only through `place`.
    """

    name: str
    pixels: np.ndarray  # H×W×4 uint8, straight (not premultiplied) alpha
    opacity: float = 1.0
    visible: bool = True
    id: str = field(default_factory=new_id)
    source: str | None = None  # id of the generated result this layer holds (lineage)
    painted: bool = False  # a person painted on it after it was generated
    x: int = 0  # canvas position of the pixels' top-left corner
    y: int = 0
    rev: int = field(default_factory=lambda: next(_revisions), compare=False, repr=False)

    def properties(self) -> dict[str, Any]:
        """Everything but the pixels, as plain JSON values (projects and the journal store these)."""
        return {
            "id": self.id,
            "name": self.name,
            "opacity": float(self.opacity),
            "visible": bool(self.visible),
            "source": self.source,
            "painted": bool(self.painted),
            "x": int(self.x),
            "y": int(self.y),
        }

    @classmethod
    def from_properties(cls, props: dict[str, Any], pixels: np.ndarray) -> Layer:
        """The layer `properties()` described, with these pixels (a KeyError, TypeError or ValueError
        when a field is missing or of the wrong kind; x and y default to 0)."""
        return cls(
            str(props["name"]),
            pixels,
            float(props["opacity"]),
            bool(props["visible"]),
            str(props["id"]),
            props["source"],
            bool(props["painted"]),
            int(props.get("x", 0)),
            int(props.get("y", 0)),
        )

    def copy(self, **changes: Any) -> Layer:
        """An independent copy, with some fields changed; the pixels are shared until one side writes."""
        return replace(self, pixels=shared(self.pixels), **changes)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Where the layer's pixels lie on the canvas: x, y, width, height."""
        return self.x, self.y, int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The layer's RGBA pixels inside a canvas rectangle (transparent where it has none); read only."""
        lx, ly = x - self.x, y - self.y
        if lx >= 0 and ly >= 0 and lx + w <= self.pixels.shape[1] and ly + h <= self.pixels.shape[0]:
            view = self.pixels[ly : ly + h, lx : lx + w]
            view.setflags(write=False)  # a view for reading: writes go through `place`
            return view
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0 = max(x, self.x), max(y, self.y)
        x1, y1 = min(x + w, self.x + self.pixels.shape[1]), min(y + h, self.y + self.pixels.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.pixels[
                y0 - self.y : y1 - self.y, x0 - self.x : x1 - self.x
            ]
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """Set fields from a state saved earlier (pixels, x, y, opacity…), as a new revision."""
        for key, value in state.items():
            setattr(self, key, value)
        self.rev = next(_revisions)

    def full(self, width: int, height: int) -> np.ndarray:
        """The layer as a width×height canvas-size RGBA array (read only when it already is one)."""
        return self.region(0, 0, width, height)

    def place(self, x: int, y: int, patch: np.ndarray) -> None:
        """Write RGBA `patch` at canvas position (x, y), growing the layer to cover it if needed."""
        h, w = patch.shape[:2]
        x0, y0 = min(self.x, x), min(self.y, y)
        x1 = max(self.x + self.pixels.shape[1], x + w)
        y1 = max(self.y + self.pixels.shape[0], y + h)
        if (x0, y0, x1 - x0, y1 - y0) != self.bounds:
            grown = np.zeros((y1 - y0, x1 - x0, 4), np.uint8)
            ph, pw = self.pixels.shape[:2]
            grown[self.y - y0 : self.y - y0 + ph, self.x - x0 : self.x - x0 + pw] = self.pixels
            self.pixels, self.x, self.y = grown, x0, y0
        else:
            self.pixels = writable(self.pixels)
        self.pixels[y - self.y : y - self.y + h, x - self.x : x - self.x + w] = patch
        self.rev = next(_revisions)


def blank_pixels(width: int, height: int, rgba: tuple[int, int, int, int] = (0, 0, 0, 0)) -> np.ndarray:
    """An H×W×4 uint8 array filled with one colour (transparent by default)."""
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[...] = rgba
    return out


def rgb_to_rgba(rgb: np.ndarray) -> np.ndarray:
    """Opaque RGBA from an H×W×3 uint8 image."""
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    return np.concatenate([rgb.astype(np.uint8), alpha], axis=2)


def merge_pixels(
    upper: np.ndarray, upper_opacity: float, lower: np.ndarray, lower_opacity: float
) -> np.ndarray:
    """`upper` over `lower` (straight-alpha RGBA, each with its layer opacity) as one layer of opacity 1.

    Over any background the merged layer composites to what the two layers gave (to rounding).
    """
    up = upper.astype(np.float32) / 255.0
    lo = lower.astype(np.float32) / 255.0
    a_up = up[..., 3:4] * upper_opacity
    a_lo = lo[..., 3:4] * lower_opacity
    alpha = a_up + a_lo * (1.0 - a_up)
    rgb = (up[..., :3] * a_up + lo[..., :3] * a_lo * (1.0 - a_up)) / np.maximum(alpha, 1e-6)
    out = np.concatenate([rgb, alpha], axis=2) * 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
