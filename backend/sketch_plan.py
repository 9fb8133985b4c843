"""What a sketch asks of the patch engine, worked out without torch (the window reads it too): the
sketch's main colours, the material each becomes, and the Structure slider's size in pixels.

A sketch is a few flat colours. Each of its main colours is matched to the references the prompt chose by
how likely that colour is under each reference's palette (yellow is likely under hammered gold, unlikely
under rose gold), times the prompt's share; the colour around the sketch's edge is the paper and keeps its
own look (the sketch itself is the only reference there); a person can pin any colour to any reference,
or to the sketch. backend/materials.py turns the plan into per-pixel priors and sources for the engine.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backend.errors import ReferencesError
from backend.priors import EXCLUDED
from backend.references import ReferenceSet

# The low-pass size as a fraction of the image side: 2**(LOW + SPAN·structure), side/32 to side/2. The
# default 0.5 (side/8) leaves a material's own texture room: at side/16 hammered gold's nuggets, about a
# tenth of the side, were flattened into streaks.
STRUCTURE_LOW, STRUCTURE_SPAN = -5.0, 4.0


def structure_size(structure: float, side: int) -> float:
    """The Structure slider's low-pass size in pixels: side/32 at 0 (exact colours), side/2 at 1."""
    return side * 2.0 ** (STRUCTURE_LOW + STRUCTURE_SPAN * structure)


SKETCH = "sketch"  # the name of the init image as a reference: in pins, shares and the attribution map
MAX_COLOURS = 8  # main colours of a sketch: enough for a drawing, few enough to list in a table
MIN_FRACTION = 0.01  # a colour covering less is a stray pixel or an anti-aliased edge, not a region
MERGE = 0.06  # main colours closer than this (Oklab) are one colour
BLEND_SHARE = 0.15  # a colour smaller than this lying between two larger ones is their blended edge
PIN_REACH = 0.12  # a pin applies to the main colour within this distance of it (Oklab)
MEMBERSHIP = 0.02  # how sharply a pixel belongs to its nearest main colour (Oklab distance scale)
# Below this a pixel's membership in a colour is nothing: a prior that shuts a reference out of a colour
# must stay shut (patch distances outweigh any merely small prior), except where colours blend.
MEMBERSHIP_FLOOR = -20.0
PALETTE_SPREAD = 0.015  # how far from a palette colour a sketch colour still counts as that colour
# Hue and chroma say more about a material than lightness: a sketch's brown is lighter or darker than the
# leather it stands for, and hammered gold's shadows are brown. Lightness counts 0.3 in colour matching.
PALETTE_AXES = np.array([0.3, 1.0, 1.0])
# A reference whose match to a colour is this much worse than the best one's is shut out of that colour:
# a merely low prior loses to patch distances at low noise (pale rose-gold patches fit the white side of a
# yellow stroke's edge better than any hammered-gold patch), so materials would fray at the edges.
MATCH_GAP = 1.0
BORDER_SHARE = 0.5  # a colour covering more of the image's edge than this is the paper (background)


def oklab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (…×3) to Oklab (Björn Ottosson 2020): distances there follow perceived differences."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lms = lin @ np.array(
        [[0.4122214708, 0.2119034982, 0.0883024619],
         [0.5363325363, 0.6806995451, 0.2817188376],
         [0.0514459929, 0.1073969566, 0.6299787005]]
    )  # fmt: skip
    lms = np.cbrt(lms)
    return lms @ np.array(
        [[0.2104542553, 1.9779984951, 0.0259040371],
         [0.7936177850, -2.4285922050, 0.7827717662],
         [-0.0040720468, 0.4505937099, -0.8086757660]]
    )  # fmt: skip


def hex_colour(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """#rrggbb for an RGB triple of 0–255 values."""
    r, g, b = (int(round(float(v))) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def parse_colour(text: str) -> tuple[int, int, int]:
    """An (r, g, b) triple from "#rrggbb" or "rrggbb"; ValueError for anything else."""
    value = text.strip().removeprefix("#")
    if len(value) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in value):
        raise ValueError(f"{text!r} is not a colour like #f0c828")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@dataclass(frozen=True)
class Palette:
    """A few colours (Oklab, K×3) with the fraction of the image each covers (K)."""

    lab: np.ndarray
    weight: np.ndarray

    def log_likelihood(self, lab: np.ndarray) -> np.ndarray:
        """log p(colour | this palette) for colours (…×3), up to a constant shared by all palettes."""
        d2 = (((lab[..., None, :] - self.lab) * PALETTE_AXES) ** 2).sum(-1)
        scores = np.log(self.weight + 1e-12) - d2 / (2 * PALETTE_SPREAD**2)
        top = scores.max(-1)
        return top + np.log(np.exp(scores - top[..., None]).sum(-1))


def quantize(pixels: np.ndarray, colours: int) -> tuple[np.ndarray, np.ndarray]:
    """The main colours of some pixels (M×3 uint8) by median cut: (K×3 uint8 colours, K pixel counts)."""
    strip = Image.fromarray(np.ascontiguousarray(pixels.reshape(1, -1, 3)), "RGB")
    quant = strip.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    raw = quant.getpalette() or []
    table = np.array(raw[: 3 * (len(raw) // 3)], dtype=np.uint8).reshape(-1, 3)
    counts = np.bincount(np.asarray(quant).ravel(), minlength=len(table))[: len(table)]
    used = counts > 0
    return table[used], counts[used]


_PALETTES: OrderedDict[str, list[Palette]] = OrderedDict()


def mean_colour(pixels: np.ndarray) -> Palette:
    """A material's colour as a sketch would draw it: its mean (Oklab), as a one-colour palette.

    Not its parts: hammered gold's shadows are brown and its highlights pale, yet a person draws it yellow.
    """
    return Palette(oklab(pixels.reshape(-1, 3) / 255.0).mean(0, keepdims=True), np.ones(1))


def palettes(refs: ReferenceSet) -> list[Palette]:
    """Every reference's colour (`mean_colour`), computed once per reference set."""
    if refs.digest not in _PALETTES:
        _PALETTES[refs.digest] = [mean_colour(r.pixels) for r in refs.references]
        while len(_PALETTES) > 8:
            _PALETTES.popitem(last=False)
    _PALETTES.move_to_end(refs.digest)
    return _PALETTES[refs.digest]


@dataclass(frozen=True)
class SketchColour:
    """One of a sketch's main colours: its value, the share of the sketch it covers, whether it is paper."""

    rgb: tuple[int, int, int]
    fraction: float
    background: bool = False

    @property
    def hex(self) -> str:
        """The colour as #rrggbb (how pins name it)."""
        return hex_colour(self.rgb)


def main_colours(pixels: np.ndarray, region: np.ndarray | None = None) -> list[SketchColour]:
    """A sketch's main colours, largest first; the one covering most of the image's edge is the paper.

    `region` (H×W bool) limits it to those pixels (what an inpainting mask repaints); then there is no
    paper: the kept pixels around it are the context instead.
    """
    h, w = pixels.shape[:2]
    step = max(1, max(h, w) // 128)
    small = pixels[::step, ::step]
    inside = None if region is None else region[::step, ::step]
    chosen = small.reshape(-1, 3) if inside is None else small[inside]
    if len(chosen) == 0:
        return []
    table, counts = quantize(chosen, MAX_COLOURS)
    lab = oklab(table / 255.0)
    # Merge near-equal colours (anti-aliasing and JPEG noise make several), largest first.
    order = np.argsort(-counts, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        for g in groups:
            if np.linalg.norm(lab[i] - lab[g[0]]) < MERGE:
                g.append(int(i))
                break
        else:
            groups.append([int(i)])
    total = counts.sum()
    merged = [(table[g[0]], counts[g].sum() / total) for g in groups]
    kept = [(rgb, share) for rgb, share in merged if share >= MIN_FRACTION] or merged[:1]
    kept = _without_blends(kept)
    share_sum = sum(share for _, share in kept)
    colours = [
        SketchColour((int(rgb[0]), int(rgb[1]), int(rgb[2])), float(share / share_sum)) for rgb, share in kept
    ]
    if region is None:
        colours = _mark_paper(small, colours)
    return colours


def _without_blends(colours: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    """Drop small colours lying between two larger ones: a soft brush's edge, not a colour of its own."""
    lab = [oklab(rgb / 255.0) for rgb, _ in colours]
    out = []
    for i, (rgb, share) in enumerate(colours):
        blend = False
        if share < BLEND_SHARE:
            for a in range(i):
                for b in range(a + 1, i):
                    ab = lab[b] - lab[a]
                    along = float(np.clip((lab[i] - lab[a]) @ ab / max(float(ab @ ab), 1e-12), 0, 1))
                    blend = blend or float(np.linalg.norm(lab[a] + along * ab - lab[i])) < MERGE
        if not blend:
            out.append((rgb, share))
    return out


def _mark_paper(small: np.ndarray, colours: list[SketchColour]) -> list[SketchColour]:
    edge = np.concatenate([small[:2].reshape(-1, 3), small[-2:].reshape(-1, 3)])
    edge = np.concatenate([edge, small[:, :2].reshape(-1, 3), small[:, -2:].reshape(-1, 3)])
    nearest = _nearest(oklab(edge / 255.0), oklab(np.array([c.rgb for c in colours]) / 255.0))
    share = np.bincount(nearest, minlength=len(colours)) / len(nearest)
    paper = int(share.argmax())
    if share[paper] <= BORDER_SHARE:
        return colours
    return [SketchColour(c.rgb, c.fraction, i == paper) for i, c in enumerate(colours)]


def _nearest(lab: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return ((lab[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)


@dataclass(frozen=True)
class MaterialPlan:
    """Per-colour reference priors: which reference each sketch colour is painted in, and how firmly."""

    colours: tuple[SketchColour, ...]
    names: tuple[str, ...]  # candidate references, the sketch last
    priors: np.ndarray  # colours × candidates, log-priors (EXCLUDED: never)
    pinned: tuple[str | None, ...]  # per colour: the reference a pin gave it, or None


def plan_materials(
    colours: list[SketchColour],
    names: list[str],
    shares: list[float],
    candidate_palettes: list[Palette],
    sketch_palette: Palette | None,
    pins: tuple[tuple[str, str], ...] = (),
) -> MaterialPlan:
    """Each colour's log-prior over the candidates `names` + [SKETCH].

    `shares` are the prompt's shares (0 for a reference only a pin brought in). `sketch_palette` is the
    inpainting context's palette (it competes like a reference), or None for a sketch (used only for the
    paper and for colours pinned to it). Pins are (colour, reference name) pairs.
    """
    everything = [*names, SKETCH]
    n = len(everything)
    lab = oklab(np.array([c.rgb for c in colours], dtype=np.float64).reshape(-1, 3) / 255.0)
    pinned: list[str | None] = [None] * len(colours)
    for pin_colour, target in pins:
        if not colours:
            break
        pin_lab = oklab(np.array(_rgb(pin_colour), dtype=np.float64) / 255.0)
        d = np.linalg.norm(lab - pin_lab, axis=1)
        if d.min() <= PIN_REACH and target in everything:
            pinned[int(d.argmin())] = target
    priors = np.full((len(colours), n), EXCLUDED)
    with np.errstate(divide="ignore"):
        log_share = np.log(np.asarray(shares, dtype=np.float64))
    for c, colour in enumerate(colours):
        pin = pinned[c]
        if pin is not None:
            priors[c, everything.index(pin)] = 0.0
            continue
        if colour.background:
            priors[c, n - 1] = 0.0
            continue
        scores = [
            log_share[i] + float(p.log_likelihood(lab[c])) if np.isfinite(log_share[i]) else -math.inf
            for i, p in enumerate(candidate_palettes)
        ]
        if sketch_palette is not None:
            scores.append(float(sketch_palette.log_likelihood(lab[c])))
        row = np.asarray(scores) - max(scores)
        row[~(row >= -MATCH_GAP)] = EXCLUDED  # also the -inf of references the prompt did not choose
        priors[c, : len(row)] = row
    return MaterialPlan(tuple(colours), tuple(everything), priors, tuple(pinned))


def pinned_references(refs: ReferenceSet, pins: tuple[tuple[str, str], ...]) -> list[int]:
    """Indices of the references pins name (SKETCH is not one); ReferencesError names an unknown one."""
    out = []
    for colour, target in pins:
        if target == SKETCH:
            continue
        if target not in refs.names:
            raise ReferencesError(
                f"the pin for {colour} names {target!r}, which is not a reference in {refs.folder.name} "
                f"(choose one of {', '.join(refs.names[:6])}{', ...' if len(refs.names) > 6 else ''})"
            )
        out.append(refs.names.index(target))
    return out


def _rgb(colour: str) -> tuple[int, int, int]:
    try:
        return parse_colour(colour)
    except ValueError:
        return (0, 0, 0)  # validation names a bad pin before a run; here it simply matches nothing
