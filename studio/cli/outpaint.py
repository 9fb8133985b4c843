"""The command line's outpainting: `generate --expand right=128` (or left=, top=, bottom=, x=, y=, all=).

The image to grow is `--init-image`, or the `--recipe` image itself (its prompt and model then fill the new
area): `studio-cli generate --recipe pick.png --expand x=128 --out wide.png`. The new area is inpainted at
`--strength` (default 1: from noise, with the old image as context); the output is the whole grown image.
"""

from __future__ import annotations

import argparse

from backend.errors import StudioError
from backend.images import load_picture
from backend.outpaint import outpaint_request, parse_expansion
from backend.request import Request


class OutpaintUsageError(StudioError):
    """Outpaint options that do not go together (the CLI turns it into a usage error)."""


def add_arguments(g: argparse.ArgumentParser) -> None:
    """The outpaint option of `generate`."""
    g.add_argument(
        "--expand",
        metavar="SIDE=PX[,...]",
        help="grow the init (or --recipe) image, e.g. right=128 or all=64, and paint the new area",
    )


def outpaint(args: argparse.Namespace, request: Request) -> Request:
    """The request with the outpainting the options ask for, or unchanged."""
    if args.expand is None:
        return request
    source_path = args.init_image or args.recipe
    if not source_path:
        raise OutpaintUsageError("--expand needs the image to grow: --init-image IMAGE or --recipe IMAGE")
    if args.mask or args.width or args.height or args.upscale or request.grid is not None:
        raise OutpaintUsageError(
            "--expand sets the size and mask itself; it takes no --mask, --width, --height, --upscale or grid"
        )
    source = load_picture(source_path)
    base = request.replace(strength=args.strength if args.strength is not None else 1.0)
    return outpaint_request(base, source.pixels, parse_expansion(args.expand))
