"""Outpainting: grow an image on any side and fill the new area by inpainting with the context around it.

The request is an ordinary inpaint request, so every engine runs it as it runs inpainting (diffusers with
an ordinary or a 9-channel UNet, the patch engine) and its recipe re-runs it: the init image is the grown
image with the new area pre-filled from its edges (a colour prior for img2img at strength below 1), the mask
covers the new area and a thin band of the old image along the seam, so that the join is repainted too.
Sides grow in multiples of 8 pixels, as the engines need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from backend.errors import RequestError
from backend.images import Picture
from backend.request import SIZE_LIMITS, Request

SEAM_BAND = 8  # pixels of the old image along each grown side that are repainted with the new area
CONTEXT = 256  # pixels of the old image a cropped outpaint keeps around the new area (a large canvas)
DIRECTIONS = ("left", "top", "right", "bottom")


@dataclass(frozen=True)
class Expansion:
    """Pixels to add on each side."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    def rounded(self, multiple: int = 8) -> Expansion:
        """Each side rounded up to a multiple of `multiple`."""
        up = [-(-v // multiple) * multiple for v in (self.left, self.top, self.right, self.bottom)]
        return Expansion(*up)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The grown size of a width × height image."""
        return width + self.left + self.right, height + self.top + self.bottom

    @property
    def empty(self) -> bool:
        """True when no side grows."""
        return not (self.left or self.top or self.right or self.bottom)


def parse_expansion(text: str) -> Expansion:
    """ "right=128", "left=64,top=32", "all=64" or "x=64,y=32" (both sides of an axis) → Expansion."""
    sides = dict.fromkeys(DIRECTIONS, 0)
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        try:
            pixels = int(value)
        except ValueError:
            raise RequestError(f"expand: {part!r} should look like right=128") from None
        if pixels < 0:
            raise RequestError(f"expand: {name} must not be negative (got {pixels})")
        targets = {"all": DIRECTIONS, "x": ("left", "right"), "y": ("top", "bottom")}.get(name, (name,))
        for side in targets:
            if side not in sides:
                raise RequestError(
                    f"expand: unknown side {name!r}; use left, top, right, bottom, x, y or all"
                )
            sides[side] = pixels
    expansion = Expansion(**sides)
    if expansion.empty:
        raise RequestError("expand: give at least one side, e.g. right=128")
    return expansion


def grow(image: np.ndarray, expansion: Expansion) -> tuple[np.ndarray, np.ndarray]:
    """(the grown image with the new area filled from its edges, the mask: 255 = paint, 0 = keep)."""
    e = expansion
    h, w = image.shape[:2]
    pad = ((e.top, e.bottom), (e.left, e.right), (0, 0))
    stretched = np.pad(image, pad, mode="edge")  # each new pixel takes the nearest edge pixel's colour
    new = np.ones(stretched.shape[:2], dtype=bool)
    new[e.top : e.top + h, e.left : e.left + w] = False
    # Blur the stretched edges so the prior is a soft colour field, not streaks; the old pixels stay exact.
    radius = max(4, max(e.left, e.top, e.right, e.bottom) // 4)
    soft = np.asarray(Image.fromarray(stretched).filter(ImageFilter.GaussianBlur(radius)))
    filled = np.where(new[..., None], soft, stretched)
    mask = np.zeros(new.shape, dtype=np.uint8)
    mask[new] = 255
    band = SEAM_BAND
    if e.left:
        mask[e.top : e.top + h, e.left : e.left + band] = 255
    if e.right:
        mask[e.top : e.top + h, e.left + w - band : e.left + w] = 255
    if e.top:
        mask[e.top : e.top + band, e.left : e.left + w] = 255
    if e.bottom:
        mask[e.top + h - band : e.top + h, e.left : e.left + w] = 255
    return filled, mask


def fitted(expansion: Expansion, width: int, height: int) -> Expansion:
    """The expansion rounded up to multiples of 8, with what the grown size lacks of a multiple of 8 added
    to a growing side of that axis (or to the right or bottom)."""
    e = expansion.rounded()
    if e.empty:
        raise RequestError("outpainting needs at least one side to grow")
    extra_w, extra_h = (-(width + e.left + e.right)) % 8, (-(height + e.top + e.bottom)) % 8
    left, right = (e.left + extra_w, e.right) if e.left and not e.right else (e.left, e.right + extra_w)
    top, bottom = (e.top + extra_h, e.bottom) if e.top and not e.bottom else (e.top, e.bottom + extra_h)
    return Expansion(left, top, right, bottom)


def outpaint_request(base: Request, image: np.ndarray, expansion: Expansion) -> Request:
    """The inpaint request that grows `image` (H×W×3 uint8) by `expansion` (see `fitted`) and fills the new
    area; `base` gives the prompt, seed, model, settings and strength (1 paints the new area from noise;
    less lets the edge colours show through)."""
    e = fitted(expansion, image.shape[1], image.shape[0])
    filled, mask = grow(image, e)
    height, width = filled.shape[:2]
    return base.replace(
        init_image=Picture(filled),
        mask=Picture(mask),
        width=width,
        height=height,
        grid=None,
        upscale=None,
    )


def outpaint_crop(base: Request, image: np.ndarray, expansion: Expansion) -> tuple[Request, tuple[int, int]]:
    """Like `outpaint_request`, for a grown canvas larger than the engine takes: the request covers the new
    area and up to CONTEXT pixels of the picture beside it, within the engine's size limit; also returns
    where that crop's top-left lies on the grown canvas. A canvas within the limit is taken whole."""
    e = fitted(expansion, image.shape[1], image.shape[0])
    filled, mask = grow(image, e)
    height, width = filled.shape[:2]
    limit = SIZE_LIMITS.get(base.engine, (64, 2048))[1]
    x0, x1 = _span(width, e.left, e.right, limit, "wide")
    y0, y1 = _span(height, e.top, e.bottom, limit, "tall")
    request = base.replace(
        init_image=Picture(filled[y0:y1, x0:x1]),
        mask=Picture(mask[y0:y1, x0:x1]),
        width=x1 - x0,
        height=y1 - y0,
        grid=None,
        upscale=None,
    )
    return request, (x0, y0)


def _span(length: int, before: int, after: int, limit: int, what: str) -> tuple[int, int]:
    """The part of one axis (start, end) a cropped outpaint covers: all of it when it fits the limit."""
    if length <= limit:
        return 0, length
    if before and after:
        raise RequestError(
            f"the grown canvas is {length} px {what}, more than the engine's {limit}: grow one side at a time"
        )
    if not before and not after:
        raise RequestError(
            f"the canvas is {length} px {what}, more than the engine's {limit}: grow it along the other side "
            "only, or use an engine that takes larger images"
        )
    grow_by = before or after
    if grow_by + SEAM_BAND > limit:
        raise RequestError(f"grow at most {limit - SEAM_BAND} px at a time with this engine (got {grow_by})")
    reach = min(limit, grow_by + SEAM_BAND + CONTEXT) // 8 * 8
    return (0, reach) if before else (length - reach, length)
