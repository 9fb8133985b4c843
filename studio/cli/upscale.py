"""The command line's upscaling: `generate --upscale 2|3|4 [--upscaler FILE] [--upscale-tile PX]
[--upscale-overlap PX]`.

The image to upscale is `--init-image`, or the `--recipe` image itself (its prompt and model then drive the
refine): `studio-cli generate --recipe pick.png --upscale 2 --out big.png`. The refine strength is
`--strength` (default 0.3; 0 upscales without refining).
"""

from __future__ import annotations

import argparse

from backend.errors import StudioError
from backend.images import load_picture
from backend.request import Request
from backend.upscale_spec import DEFAULT_OVERLAP, DEFAULT_REFINE, FACTORS, Upscale, upscale_request


class UpscaleUsageError(StudioError):
    """Upscale options that do not go together (the CLI turns it into a usage error)."""


def add_arguments(g: argparse.ArgumentParser) -> None:
    """The upscale options of `generate`."""
    g.add_argument(
        "--upscale",
        type=int,
        choices=FACTORS,
        metavar="N",
        help="make the init (or --recipe) image N times larger, then refine it at --strength (default 0.3)",
    )
    g.add_argument(
        "--upscaler", metavar="FILE", help="an ESRGAN-family model file or name (default: Lanczos)"
    )
    g.add_argument(
        "--upscale-tile", type=int, metavar="PX", help="refine tile size (default: the model's native size)"
    )
    g.add_argument(
        "--upscale-overlap", type=int, metavar="PX", help=f"refine tile overlap (default {DEFAULT_OVERLAP})"
    )


def with_upscale(args: argparse.Namespace, request: Request) -> Request:
    """The request with the upscale the options ask for (or the recipe's own), or unchanged."""
    if args.upscale is None:
        if args.upscaler or args.upscale_tile or args.upscale_overlap is not None:
            raise UpscaleUsageError("--upscaler, --upscale-tile and --upscale-overlap go with --upscale N")
        if request.upscale is None or request.init_image is None:
            return request
        # A recipe's upscale (perhaps of a new --init-image): the final size follows the image.
        factor = request.upscale.factor
        return request.replace(
            width=request.init_image.width * factor, height=request.init_image.height * factor
        )
    source_path = args.init_image or args.recipe
    if not source_path:
        raise UpscaleUsageError("--upscale needs the image to upscale: --init-image IMAGE or --recipe IMAGE")
    if args.mask or args.width or args.height:
        raise UpscaleUsageError(
            "--upscale sets the size from the image; it takes no --mask, --width or --height"
        )
    source = load_picture(source_path)
    settings = Upscale(
        factor=args.upscale,
        model=args.upscaler or "",
        tile=args.upscale_tile or 0,
        overlap=args.upscale_overlap if args.upscale_overlap is not None else DEFAULT_OVERLAP,
    )
    strength = args.strength if args.strength is not None else DEFAULT_REFINE
    return upscale_request(request, source, settings, strength)
