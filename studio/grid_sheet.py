"""A grid as one labelled picture, the way A1111's X/Y/Z plot exports it: the x values over the columns,
the y values left of the rows, the cells at full size below and beside them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from backend.grids import Grid
from studio.files.pngmeta import save_png
from studio.gallery import Result
from studio.recipe import Provenance

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def labelled_sheet(grid: Grid, images: list[np.ndarray]) -> np.ndarray:
    """The cells (H×W×3 uint8 each, in run order) with their axis values written around them."""
    columns, rows = grid.shape
    h, w = images[0].shape[:2]
    size = max(12, min(48, w // 16))
    font = ImageFont.load_default(size=size)
    pad = size // 2
    x_labels = [grid.x.value_label(v) for v in grid.x.values]
    y_labels = [grid.y.value_label(v) for v in grid.y.values] if grid.y is not None else []
    x_lines = [_wrap(text, font, w - 2 * pad) for text in x_labels]
    line_h = _line_height(font)
    top = max(len(lines) for lines in x_lines) * line_h + 2 * pad
    left_w = min(w, max((_width(font, t) for t in y_labels), default=0) + 2 * pad) if y_labels else 0
    y_lines = [_wrap(text, font, left_w - 2 * pad) for text in y_labels]

    canvas = Image.new("RGB", (left_w + columns * w, top + rows * h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for column, lines in enumerate(x_lines):
        _centred(draw, font, lines, left_w + column * w, 0, w, top, line_h)
    for row, lines in enumerate(y_lines):
        _centred(draw, font, lines, 0, top + row * h, left_w, h, line_h)
    for k, (column, row) in enumerate(grid.positions()):
        canvas.paste(Image.fromarray(images[k]), (left_w + column * w, top + row * h))
    return np.asarray(canvas)


def _width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _line_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    box = font.getbbox("Ayg")
    return int(box[3] - box[1]) + 4


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Words on lines no wider than `width` (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _width(font, lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _centred(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    lines: list[str],
    x: int,
    y: int,
    w: int,
    h: int,
    line_h: int,
) -> None:
    top = y + (h - len(lines) * line_h) // 2
    for n, line in enumerate(lines):
        draw.text((x + (w - _width(font, line)) // 2, top + n * line_h), line, fill=INK, font=font)


def save_grid(path: str, entry: Result, cells: list[Result]) -> None:
    """Export a gallery grid as one labelled PNG carrying the grid's recipe (which re-runs the grid)."""
    grid = entry.request.grid
    if grid is None or len(cells) != grid.count:
        raise ValueError("not a grid with all its cells")
    image = labelled_sheet(grid, [c.image for c in cells])
    save_png(path, image, entry.request, entry.extras, Provenance(entry.id, entry.parents, entry.painted))
