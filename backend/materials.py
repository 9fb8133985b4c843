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
from dataclasses import dataclass

import numpy as np
import torch

from backend.priors import EXCLUDED
from backend.sketch import lowpass
from backend.sketch_plan import (
    MEMBERSHIP,
    MEMBERSHIP_FLOOR,
    SKETCH,
    MaterialPlan,
    SketchColour,
    oklab,
)


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
