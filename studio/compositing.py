"""Compositing layers into the picture a person sees: uint8 all the way, one band of rows at a time.

Layers are straight-alpha RGBA at their own size and offset on the canvas (`Layer.x`, `Layer.y`). Each
band of rows is blended with Pillow's `alpha_composite` (integer arithmetic in C), so compositing costs
the output plus one band of scratch memory, never a float copy of the canvas: a 2048² picture of five
layers takes a fraction of a second and no more than its own 12 MB.

`Compositor` keeps a composite up to date for a view: it remembers the composite of the layers below a
*pivot* (the active layer), so a change to the active layer or to anything above it re-blends only the
layers from the pivot up. Every path blends the same layers in the same order with the same integer
arithmetic, so the cached picture is bit-identical to `composite()` of the same layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from studio.layers import Layer

BAND_PIXELS = 1 << 18  # about 1 MB of RGBA scratch per band: fits a CPU cache, bounds the memory
WHITE = (255, 255, 255, 255)

Rect = tuple[int, int, int, int]  # x, y, width, height in canvas pixels


def composite(layers: Sequence[Layer], width: int, height: int) -> np.ndarray:
    """The visible layers, bottom first, alpha-blended over white: H×W×3 uint8."""
    out = np.empty((height, width, 3), np.uint8)
    blend_into(out, layers, (0, 0, width, height))
    return out


def blend_into(
    out: np.ndarray,
    layers: Sequence[Layer],
    rect: Rect,
    base: np.ndarray | None = None,
    replace: tuple[str, np.ndarray] | None = None,
) -> None:
    """Write the composite of `layers` inside canvas rectangle `rect` into `out`: h×w×3 RGB, or h×w×4
    RGBX (the alpha byte is 255), uint8.

    `base` (like `out`, and may be `out` itself) is what lies under the first layer; white when None.
    `replace` = (layer id, h×w×4 pixels of `rect`) shows that layer with other pixels (a stroke in
    progress) without touching it.
    """
    x, y, w, h = rect
    if w <= 0 or h <= 0:
        return
    band = max(1, BAND_PIXELS // w)
    for top in range(0, h, band):
        rows = min(band, h - top)
        if base is None:
            acc = Image.new("RGBA", (w, rows), WHITE)
        elif base.shape[2] == 4:
            acc = Image.fromarray(np.ascontiguousarray(base[top : top + rows]), "RGBA")
        else:
            acc = Image.fromarray(np.ascontiguousarray(base[top : top + rows]), "RGB").convert("RGBA")
        for layer in layers:
            if not layer.visible or layer.opacity <= 0:
                continue
            if replace is not None and layer.id == replace[0]:
                _blend_layer(acc, replace[1][top : top + rows], 0, 0, layer.opacity)
                continue
            # The part of this layer inside the band, in the layer's own coordinates.
            bx0, by0 = max(x, layer.x), max(y + top, layer.y)
            bx1 = min(x + w, layer.x + layer.pixels.shape[1])
            by1 = min(y + top + rows, layer.y + layer.pixels.shape[0])
            if bx1 <= bx0 or by1 <= by0:
                continue
            src = layer.pixels[by0 - layer.y : by1 - layer.y, bx0 - layer.x : bx1 - layer.x]
            if not src[..., 3].any():
                continue  # transparent here (a new layer, a blank one): checking is far cheaper than blending
            _blend_layer(acc, src, bx0 - x, by0 - y - top, layer.opacity)
        out[top : top + rows] = np.asarray(acc if out.shape[2] == 4 else acc.convert("RGB"))


def _blend_layer(acc: Image.Image, src: np.ndarray, dx: int, dy: int, opacity: float) -> None:
    """Blend straight-alpha RGBA `src` over `acc` at (dx, dy), its alpha scaled by `opacity`."""
    level = int(round(min(max(opacity, 0.0), 1.0) * 255))
    if level < 255:
        src = src.copy()
        src[..., 3] = (src[..., 3].astype(np.uint16) * level + 127) // 255
    image = Image.fromarray(np.ascontiguousarray(src), "RGBA")
    if (dx, dy) == (0, 0) and image.size == acc.size:
        acc.paste(Image.alpha_composite(acc, image))
    else:
        acc.alpha_composite(image, (dx, dy))


def _signature(layer: Layer) -> tuple:
    """What decides a layer's contribution: a change to any of these changes the picture."""
    return (layer.id, layer.rev, id(layer.pixels), layer.x, layer.y, layer.visible, float(layer.opacity))


class Compositor:
    """A composite kept up to date incrementally: the layers below the pivot are cached.

    `pixels` is the current picture, H×W×4 RGBX uint8 (four bytes a pixel draw several times faster
    than three in Qt), updated in place while the canvas size stays. The cache of what lies below the
    pivot is made on the first change that could use it, not before, so opening a document costs only
    the picture itself.
    """

    def __init__(self) -> None:
        self.pixels = np.zeros((1, 1, 4), np.uint8)
        self._below: np.ndarray | None = None  # composite of the first `len(self._below_sigs)` layers
        self._below_sigs: list[tuple] = []
        self._sigs: list[tuple] = []  # the layers `pixels` was last made from
        self.blends = 0  # layers blended over the whole canvas since creation (tests, benches)

    @property
    def rgb(self) -> np.ndarray:
        """The picture's RGB channels (a view)."""
        return self.pixels[..., :3]

    def drop_cache(self) -> None:
        """Forget the cached layers below the pivot (it costs as much memory as the picture)."""
        self._below = None
        self._below_sigs = []

    def update(self, layers: Sequence[Layer], width: int, height: int, pivot: int) -> np.ndarray:
        """Bring `pixels` up to date with `layers`; `pivot`: the layer most likely to change next."""
        sigs = [_signature(layer) for layer in layers]
        if self.pixels.shape[:2] != (height, width):
            self.pixels = np.empty((height, width, 4), np.uint8)
            self.drop_cache()
            self._sigs = []
        elif sigs == self._sigs:
            return self.pixels
        pivot = min(max(pivot, 0), len(layers))
        cached = len(self._below_sigs)
        changed = _first_difference(sigs, self._sigs)
        rect = (0, 0, width, height)
        if self._below is not None and cached <= pivot and sigs[:cached] == self._below_sigs:
            # Extend the cache up to the pivot, then blend the rest over a copy of it.
            self._blend(self._below, layers[cached:pivot], rect, self._below)
            self._below_sigs = sigs[:pivot]
            self._blend(self.pixels, layers[pivot:], rect, self._below)
        elif self._sigs and changed >= pivot > 0:
            # The first change since the last picture is at or above the pivot: worth keeping the layers
            # below it for next time (an opacity drag, a live result, a fill, an undo of a large paint).
            self._below = np.empty((height, width, 4), np.uint8)
            self._blend(self._below, layers[:pivot], rect, None)
            self._below_sigs = sigs[:pivot]
            self._blend(self.pixels, layers[pivot:], rect, self._below)
        else:
            self.drop_cache()
            self._blend(self.pixels, layers, rect, None)
        self._sigs = sigs
        return self.pixels

    def update_region(
        self, layers: Sequence[Layer], rect: Rect, replace: tuple[str, np.ndarray] | None = None
    ) -> None:
        """Redo one rectangle of the picture (a stroke); `replace` shows one layer with other pixels there."""
        x, y, w, h = rect
        out = self.pixels[y : y + h, x : x + w]
        sigs = [_signature(layer) for layer in layers]
        cached = len(self._below_sigs)
        if self._below is not None and sigs[:cached] == self._below_sigs and _above(replace, layers, cached):
            blend_into(out, layers[cached:], rect, self._below[y : y + h, x : x + w], replace)
        else:
            blend_into(out, layers, rect, None, replace)
        if replace is None:
            self._sigs = sigs

    def composite_of(self, layers: Sequence[Layer], width: int, height: int) -> np.ndarray:
        """The composite of `layers` as a new H×W×3 array, equal to `composite()`. Taken from the picture
        when it shows exactly these layers, or blended over the cache below the pivot when that holds their
        first layers (a live run's input: the canvas under its own result, which is on top); else blended
        from scratch. Reads the caches only."""
        if self.pixels.shape[:2] == (height, width):
            sigs = [_signature(layer) for layer in layers]
            if sigs == self._sigs:
                return np.ascontiguousarray(self.pixels[..., :3])
            cached = len(self._below_sigs)
            if self._below is not None and sigs[:cached] == self._below_sigs:
                out = np.empty((height, width, 3), np.uint8)
                blend_into(out, layers[cached:], (0, 0, width, height), self._below)
                return out
        return composite(layers, width, height)

    def mark_current(self, layers: Sequence[Layer]) -> None:
        """The caller has already shown exactly these layers (a committed stroke it previewed)."""
        self._sigs = [_signature(layer) for layer in layers]

    def _blend(self, out: np.ndarray, layers: Sequence[Layer], rect: Rect, base: np.ndarray | None) -> None:
        self.blends += sum(1 for layer in layers if layer.visible and layer.opacity > 0)
        if base is None or base is out or layers:
            blend_into(out, layers, rect, base)
        else:
            out[...] = base


def _first_difference(a: Sequence[tuple], b: Sequence[tuple]) -> int:
    for i, (left, right) in enumerate(zip(a, b, strict=False)):
        if left != right:
            return i
    return min(len(a), len(b))


def _above(replace: tuple[str, np.ndarray] | None, layers: Sequence[Layer], index: int) -> bool:
    """True when the replaced layer (if any) is at or above `index`, so a cache below it still holds."""
    return replace is None or any(layer.id == replace[0] for layer in layers[index:])
