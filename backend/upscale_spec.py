"""What an upscale request says: a request whose `upscale` is set makes its init image `factor` times larger
(with a super-resolution model file, or Lanczos without one), then, when its strength is above 0, refines the
result with img2img at that strength tile by tile. Width and height are the final size. The runner is
backend/upscale.py; this module stays light so that requests validate without torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.errors import RequestError

if TYPE_CHECKING:
    from backend.images import Picture
    from backend.request import Request

FACTORS = (2, 3, 4)
MAX_SIDE = 8192  # the final image; each refine tile stays within the engine's own size limits
MIN_SOURCE = 32
DEFAULT_OVERLAP = 64
DEFAULT_REFINE = 0.3  # the strength front ends start an upscale's refine with


@dataclass(frozen=True)
class Upscale:
    """How to upscale: the factor, the model file ("" = Lanczos), and the refine's tiles (0 = the engine's
    native size: 512 for SD 1/2, 1024 for SDXL, 256 for the patch engine) and their overlap in pixels."""

    factor: int = 2
    model: str = ""
    tile: int = 0
    overlap: int = DEFAULT_OVERLAP


def problems(r: Request) -> Iterator[str]:
    """What is wrong with an upscale request, as messages a person can act on."""
    u = r.upscale
    if u is None:
        return
    if not isinstance(u, Upscale):
        yield "the upscale settings are not readable"
        return
    if u.factor not in FACTORS:
        yield f"upscale by {', '.join(map(str, FACTORS))}, not {u.factor}"
        return
    if r.init_image is None:
        yield "upscaling needs an image to upscale (the init image)"
        return
    source = r.init_image
    if source.is_mask:
        yield "the image to upscale must be a colour image, not a mask"
    if min(source.width, source.height) < MIN_SOURCE:
        yield f"the image to upscale is {source.width}×{source.height}; it needs at least {MIN_SOURCE} a side"
    if (r.width, r.height) != (source.width * u.factor, source.height * u.factor):
        yield (
            f"upscaling {source.width}×{source.height} by {u.factor} gives {source.width * u.factor}×"
            f"{source.height * u.factor}, but the request is {r.width}×{r.height}"
        )
    if max(r.width, r.height) > MAX_SIDE:
        yield f"the upscaled image would be {r.width}×{r.height}; the limit is {MAX_SIDE} a side"
    if r.mask is not None or r.grid is not None or r.controls:
        yield "an upscale takes no mask, grid or control layers"
    if r.strength > 0 and int(r.steps * r.strength) < 1:
        yield f"a refine at strength {r.strength} with {r.steps} steps runs no step; raise either (or use 0)"
    if u.tile and (u.tile % 8 or not 64 <= u.tile <= 2048):
        yield f"the refine tile must be a multiple of 8 from 64 to 2048 (got {u.tile})"
    if not 0 <= u.overlap <= 256 or (u.tile and 2 * u.overlap >= u.tile):
        yield f"the tile overlap must be from 0 to 256 pixels and under half a tile (got {u.overlap})"


def upscale_request(base: Request, source: Picture, settings: Upscale, strength: float) -> Request:
    """`base`'s prompt, model and settings upscaling `source` as `settings` say, refined at `strength`."""
    return base.replace(
        init_image=source,
        mask=None,
        grid=None,
        controls=(),
        width=source.width * settings.factor,
        height=source.height * settings.factor,
        strength=strength,
        upscale=settings,
    )


def upscale_to_json(u: Upscale) -> dict[str, Any]:
    """The upscale settings as JSON values (for recipes)."""
    return {"factor": u.factor, "model": u.model, "tile": u.tile, "overlap": u.overlap}


def upscale_from_json(data: Any) -> Upscale:
    """The Upscale an `upscale_to_json` dict describes; RequestError naming what is wrong."""
    if not isinstance(data, dict):
        raise RequestError("the upscale settings should be an object")
    try:
        values = {k: data[k] for k in ("factor", "tile", "overlap") if k in data}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise TypeError
        model = data.get("model", "")
        if not isinstance(model, str):
            raise TypeError
    except TypeError:
        raise RequestError("the upscale settings should be whole numbers and a model path") from None
    return Upscale(model=model, **values)
