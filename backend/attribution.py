"""The attribution map as a picture: each reference in its own colour, with a legend of names and shares.

A patch-engine image carries, per pixel, the reference with the largest weight in its final estimate and
that weight (`Done.attribution`, H×W×2) and the references' names in index order (`extras["references"]`).
The same colours serve the PNG that `studio-cli generate --attribution` writes and the window's overlay,
so a reference looks the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from backend.sketch_plan import SKETCH

# Distinct colours (Sasha Trubetskoy's 20), one per reference in index order, cycled past 20.
PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
        (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
        (0, 0, 128), (128, 128, 128),
    ],
    dtype=np.uint8,
)  # fmt: skip
SKETCH_COLOUR = (205, 205, 205)  # the person's own drawing: neutral, so the materials stand out
LEGEND_MIN_SIDE = 256  # the map is scaled up (nearest) to at least this, so small images stay legible


def colours_for(names: list[str]) -> np.ndarray:
    """N×3 uint8: each reference's colour by its index (the sketch grey)."""
    out = np.array([PALETTE[i % len(PALETTE)] for i in range(len(names))], dtype=np.uint8).reshape(-1, 3)
    for i, name in enumerate(names):
        if name == SKETCH:
            out[i] = SKETCH_COLOUR
    return out


def attribution_to_rgb(attribution: np.ndarray, names: list[str] | None = None) -> np.ndarray:
    """H×W×3 uint8: each pixel in its reference's colour, paler where that reference's weight is low."""
    index = attribution[..., 0].astype(np.int64)
    count = int(index.max()) + 1 if names is None else len(names)
    colours = colours_for(names if names is not None else [""] * count).astype(np.float32)
    weight = np.clip(attribution[..., 1], 0.0, 1.0)[..., None]
    picked = colours[np.clip(index, 0, len(colours) - 1)]
    return np.round(weight * picked + (1 - weight) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class LegendEntry:
    """One reference in the legend: its name, colour and the share of pixels it fed most."""

    index: int
    name: str
    rgb: tuple[int, int, int]
    share: float


def legend(attribution: np.ndarray, names: list[str]) -> list[LegendEntry]:
    """The references the map shows, most pixels first (a reference that fed no pixel is left out)."""
    index = attribution[..., 0].astype(np.int64).ravel()
    counts = np.bincount(np.clip(index, 0, len(names) - 1), minlength=len(names)) / max(1, index.size)
    colours = colours_for(names)
    entries = [
        LegendEntry(
            i, names[i], (int(colours[i][0]), int(colours[i][1]), int(colours[i][2])), float(counts[i])
        )
        for i in range(len(names))
        if counts[i] > 0
    ]
    return sorted(entries, key=lambda e: (-e.share, e.index))


def name_at(attribution: np.ndarray, names: list[str], x: int, y: int) -> str | None:
    """The reference that fed pixel (x, y) most, with its weight, for a person: "hammered_gold (93 %)"."""
    h, w = attribution.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        return None
    index = int(attribution[y, x, 0])
    name = names[index] if 0 <= index < len(names) else f"reference {index}"
    return f"{name} ({attribution[y, x, 1]:.0%})"


def attribution_sheet(attribution: np.ndarray, names: list[str]) -> Image.Image:
    """The map (scaled up to be legible) with a legend beside it: a swatch, name and share per reference."""
    rgb = attribution_to_rgb(attribution, names)
    h, w = rgb.shape[:2]
    scale = max(1, -(-LEGEND_MIN_SIDE // min(h, w)))
    picture = Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    entries = legend(attribution, names)
    font = ImageFont.load_default()
    row, swatch, pad = 18, 12, 8
    text_w = max((int(font.getlength(f"{e.name}  {e.share:.0%}")) for e in entries), default=60)
    panel_w = pad * 3 + swatch + text_w
    sheet = Image.new(
        "RGB", (picture.width + panel_w, max(picture.height, pad * 2 + row * len(entries))), "white"
    )
    sheet.paste(picture, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for n, entry in enumerate(entries):
        top = pad + n * row
        left = picture.width + pad
        draw.rectangle((left, top, left + swatch, top + swatch), fill=entry.rgb, outline=(60, 60, 60))
        draw.text(
            (left + swatch + pad, top), f"{entry.name}  {entry.share:.0%}", fill=(20, 20, 20), font=font
        )
    return sheet
