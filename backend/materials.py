"""Each colour a material: per-pixel reference priors from a sketch's colours against the references'.

A sketch is a few flat colours. Each of its main colours is matched to the references the prompt chose by
how likely that colour is under each reference's palette (yellow is likely under hammered gold, unlikely
under rose gold), times the prompt's share; the colour around the sketch's edge is the paper and keeps its
own look (the sketch itself is the only reference there); a person can pin any colour to any reference,
or to the sketch. Every pixel then gets each reference's log-prior by its soft membership in the main
colours, so strokes of one colour are painted in one material and edges blend.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from backend.els import EXCLUDED
from backend.errors import ReferencesError
from backend.references import ReferenceSet
from backend.sketch import lowpass

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


def painted(pixels: np.ndarray, plan: MaterialPlan) -> np.ndarray:
    """H×W in [0, 1]: how much each pixel belongs to colours the references paint (not kept as sketched)."""
    kept = np.array([1.0 if (p == SKETCH or (p is None and c.background)) else 0.0
                     for c, p in zip(plan.colours, plan.pinned, strict=True)])  # fmt: skip
    if not kept.any():
        return np.ones(pixels.shape[:2])
    member = memberships(pixels, plan.colours).exp().numpy()
    return 1.0 - (member @ kept).reshape(pixels.shape[:2])


def memberships(pixels: np.ndarray, colours: tuple[SketchColour, ...]) -> torch.Tensor:
    """(H·W) × colours log-memberships of each pixel (the sketch blurred a pixel or two) in the main colours.

    Blurred so that anti-aliased edges blend the two colours' materials instead of flickering between
    them; below MEMBERSHIP_FLOOR a membership is nothing, so a colour's exclusions stay firm.
    """
    h, w = pixels.shape[:2]
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)
    soft = lowpass(x, max(2.0, min(h, w) / 128), circular=False).clamp(0, 1).permute(1, 2, 0).numpy()
    lab = torch.from_numpy(oklab(soft.reshape(-1, 3)).astype(np.float32))
    centres = torch.from_numpy(oklab(np.array([c.rgb for c in colours]) / 255.0).astype(np.float32))
    out = torch.empty(h * w, len(colours))
    for start in range(0, h * w, 1 << 16):
        part = lab[start : start + (1 << 16)]
        out[start : start + len(part)] = torch.log_softmax(
            -(torch.cdist(part, centres) ** 2) / (2 * MEMBERSHIP**2), 1
        )
    return out.masked_fill_(out < MEMBERSHIP_FLOOR, -math.inf)


@dataclass(frozen=True)
class Source:
    """One image the denoiser draws from: candidate `index` of a plan, recoloured to main colour `colour`.

    A material painting a stroke is drawn from a copy of its reference shifted to the stroke's colour, so
    patches are matched on their texture, not on whether the material happens to have parts of that colour
    (the brightest hammered-gold patches are its flat highlights). `colour` None: as it is (the sketch).
    """

    name: str
    index: int
    colour: int | None


def sources(plan: MaterialPlan) -> list[Source]:
    """What the denoiser draws from: each reference once per colour it may paint, then the sketch."""
    n = len(plan.names)
    out = [
        Source(plan.names[i], i, c)
        for i in range(n - 1)
        for c in range(len(plan.colours))
        if plan.priors[c, i] > EXCLUDED
    ]
    if not plan.colours:  # nothing to go by (an empty region): every candidate as it is
        out = [Source(plan.names[i], i, None) for i in range(n - 1)]
    if not plan.colours or (plan.priors[:, n - 1] > EXCLUDED).any():
        out.append(Source(SKETCH, n - 1, None))
    return out


# When a material is moved to a bright stroke colour, its texture would pass white and flatten there.
# The colour is darkened (all channels scaled alike, so its hue holds) until at most this share of the
# texture's deviations clip in any channel: a bright yellow ring becomes a deeper gold, its hammered
# texture intact. Dark colours are left as they are: darkening cannot help there, brightening would
# change what was drawn.
CLIP_SHARE = 0.25


def room_for_texture(image: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """The colour (3, in [-1, 1]) to draw a material (C×H×W) in for `rgb`: darkened until its texture fits."""
    target = torch.tensor(rgb, dtype=image.dtype, device=image.device) / 255.0
    deviation = (image - image.mean((1, 2), keepdim=True)).flatten(1) / 2.0  # on the 0–1 scale
    room = 1.0 - torch.quantile(deviation, 1.0 - CLIP_SHARE, dim=1)  # the highest mean that fits
    scale = float((room / target.clamp(min=1e-6)).min().clamp(0.0, 1.0))
    return target * scale * 2.0 - 1.0


def recoloured(image: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """A reference (C×H×W in [-1, 1]) with its mean moved to `colour` (3): the material in that colour."""
    return (image - image.mean((1, 2), keepdim=True) + colour[:, None, None]).clamp(-1.0, 1.0)


def shifted_sketch(pixels: np.ndarray, plan: MaterialPlan, colours: dict[int, torch.Tensor]) -> torch.Tensor:
    """The sketch (3×H×W in [-1, 1]) with each painted colour moved to the colour its material is drawn in,
    by each pixel's membership: the layout the structure guide keeps."""
    h, w = pixels.shape[:2]
    sketch = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    if not colours:
        return sketch
    member = memberships(pixels, plan.colours).exp()  # (H·W) × colours
    for c, colour in colours.items():
        drawn_at = torch.tensor(plan.colours[c].rgb, dtype=torch.float32) / 127.5 - 1.0
        sketch += (colour.float().cpu() - drawn_at)[:, None, None] * member[:, c].reshape(1, h, w)
    return sketch


def source_priors(
    pixels: np.ndarray, plan: MaterialPlan, drawn: list[Source], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sources × H × W log-priors: each pixel's membership in a source's colour, times the plan's prior.

    A source for one colour gets log m_c(p) + P[c, i]; one for every colour (the sketch) gets
    log Σ_c m_c(p) · exp(P[c, i]), each pixel's mix of its colours' priors.
    """
    h, w = pixels.shape[:2]
    if not plan.colours:
        return torch.zeros(len(drawn), h, w, device=device)
    log_member = memberships(pixels, plan.colours)  # (H·W) × colours
    table = torch.from_numpy(plan.priors.astype(np.float32))
    out = torch.empty(len(drawn), h * w)
    for k, src in enumerate(drawn):
        if src.colour is not None:
            out[k] = log_member[:, src.colour] + table[src.colour, src.index]
        else:
            out[k] = torch.logsumexp(log_member + table[:, src.index], dim=1)
    return out.clamp_(min=EXCLUDED).reshape(-1, h, w).to(device)
