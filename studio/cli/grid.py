"""The command line's grids: `--batch N`, `--variations N[:TOP]`, `--grid X=..;Y=..`, `--grid-out`.

A batch writes OUT-1.png … OUT-N.png, each with its own seed and recipe; a grid also (or only) writes one
labelled PNG whose recipe re-runs the whole grid (`studio-cli generate --recipe GRID.png`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from backend.errors import StudioError
from backend.events import Done
from backend.grids import MAX_CELLS, Grid, parse_grid, seed_grid, variation_grid
from backend.images import Picture
from backend.request import MAX_SEED, Request
from studio.files.pngmeta import save_png
from studio.grid_sheet import labelled_sheet
from studio.recipe import Provenance

Lineage = Callable[[Picture, Request], Provenance]


def add_arguments(g: argparse.ArgumentParser) -> None:
    """The grid options of `generate`."""
    g.add_argument(
        "--batch", type=int, metavar="N", help=f"N images (2-{MAX_CELLS}) with consecutive seeds: OUT-1.png …"
    )
    g.add_argument(
        "--variations",
        metavar="N[:TOP]",
        help="N variations of the seed at variation strengths rising to TOP (default 0.5): OUT-1.png …",
    )
    g.add_argument(
        "--grid",
        metavar="X=VALUES[;Y=VALUES]",
        help="an X/Y grid, e.g. 'seed=1-4' or 'cfg=4,7,10;steps=10,20'",
    )
    g.add_argument(
        "--grid-out", metavar="PNG", help="write the grid as one labelled PNG (needed with --grid)"
    )


class GridUsageError(StudioError):
    """Grid options that do not go together (the CLI turns it into a usage error)."""


def grid_for(args: argparse.Namespace, request: Request) -> Request:
    """The request with the grid the options ask for (or the recipe's own grid, or none)."""
    chosen = [name for name in ("batch", "variations", "grid") if getattr(args, name) is not None]
    if len(chosen) > 1:
        raise GridUsageError(f"choose one of --{' / --'.join(chosen)}")
    if args.grid_out and not chosen and request.grid is None:
        raise GridUsageError("--grid-out needs --grid, --batch or --variations")
    grid: Grid | None = request.grid
    if args.batch is not None:
        if args.batch == 1:
            return request.replace(grid=None)
        grid = seed_grid(request.seed, args.batch)
    elif args.variations is not None:
        count, top = _variations(args.variations)
        if request.variation_seed is None:
            request = request.replace(variation_seed=(request.seed + 1) % (MAX_SEED + 1))
        grid = variation_grid(count, top)
    elif args.grid is not None:
        if not args.grid_out and not args.out:
            raise GridUsageError("--grid needs --grid-out FILE (the labelled grid) or --out for its cells")
        grid = parse_grid(args.grid)
    if grid is not None and args.attribution:
        raise GridUsageError("--attribution is for one image, not a grid")
    return request.replace(grid=grid)


def _variations(text: str) -> tuple[int, float]:
    count_text, _, top_text = text.partition(":")
    try:
        count = int(count_text)
        top = float(top_text) if top_text else 0.5
    except ValueError:
        raise GridUsageError(f"--variations should look like 4 or 4:0.6, not {text!r}") from None
    if not 0.0 < top <= 1.0:
        raise GridUsageError(f"--variations: the top strength must be above 0 and at most 1 (got {top})")
    return count, top


def cell_paths(out: Path, count: int) -> list[Path]:
    """OUT-1.png … OUT-N.png beside OUT.png."""
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(1, count + 1)]


def write_grid(
    args: argparse.Namespace, out: Path | None, done: Done, lineage: Lineage, write_cells: bool
) -> list[Path]:
    """Save a grid's cells (each with its recipe and lineage) and its labelled sheet; the paths written."""
    grid = done.request.grid
    assert grid is not None
    written: list[Path] = []
    if write_cells and out is not None:
        for path, cell in zip(cell_paths(out, len(done.cells)), done.cells, strict=True):
            save_png(path, cell.image, cell.request, cell.extras, lineage(Picture(cell.image), cell.request))
            written.append(path)
    if args.grid_out:
        image = labelled_sheet(grid, [c.image for c in done.cells])
        path = Path(args.grid_out)
        save_png(path, image, done.request, done.extras, lineage(Picture(image), done.request))
        written.append(path)
    return written
