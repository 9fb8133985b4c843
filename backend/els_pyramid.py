"""Coarse to fine for the ELS machine: high-noise steps on a smaller image, then up to full size.

At high noise the estimate is a blend of wide patches, a matter of layout; a smaller image carries it as
well for a fraction of the work, with references downsampled to match. As the noise falls the state moves
up a level at a time (the estimate upsampled, the noise kept consistent) until the last steps run at full
size. Above 128² patch sizes stay at the pixel size they have at 128², so the fine structure of the
references (veins, nuggets, weave) survives instead of being blended away by patches a third of the
image wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.els import EXCLUDED, alpha_sigma, noise_to

# The smallest level's side: the paper's calibration is for 32² images, where the highest-noise patch
# (21 px) is still a patch. Each time in FINER_AT doubles the side of the steps from below it, up to the
# request's size: 32² down to t = 0.875, 64² to 0.75, 128² to 0.5, 256² to 0.25, then 512². A step from
# exactly an edge runs on the coarser level: at 12, 8 or 20 steps one lands on each edge, and the step
# from t = 0.75 at 128² (53 px patches, over half the pixels near an edge) cost as much as two at 256²;
# on the coarser level the frame and fine-structure checks (tests/test_patch_quality.py,
# tests/test_patch_pyramid.py) hold as before, for less time (bench/RESULTS.md, speed targets).
SMALLEST_SIDE = 32
FINER_AT = (0.875, 0.75, 0.5, 0.25)
# Above this side patch sizes stop growing with the image (`patch_side`).
BASE_SIDE = 128
MAX_FACTOR = 8  # request sides are multiples of 8, so factors up to 8 divide them exactly


@dataclass(frozen=True)
class Stage:
    """A run of consecutive steps at one size: `factor` times smaller than the request on each side."""

    factor: int
    width: int
    height: int
    times: tuple[float, ...]  # the times it steps from, then the time it hands over at

    def steps(self) -> list[tuple[float, float]]:
        """(t, t_next) of each step."""
        return list(zip(self.times[:-1], self.times[1:], strict=True))


def level_side(t: float) -> int:
    """The smallest side a step from time t needs (before clamping to the request)."""
    return SMALLEST_SIDE * 2 ** sum(t < edge for edge in FINER_AT)


def level_factor(t: float, width: int, height: int) -> int:
    """The largest power-of-two shrink (≤ MAX_FACTOR) that keeps the smaller side at level_side(t)."""
    factor = 1
    while factor < MAX_FACTOR and min(width, height) / (2 * factor) >= level_side(t):
        factor *= 2
    return factor


def patch_side(width: int, height: int) -> int:
    """The side patch sizes are calibrated on at a level of this size: its own, but at most BASE_SIDE.

    Up to 128² a patch is the calibrated fraction of the image. Above, it keeps the pixel size it has
    at 128², so a 256² or 512² level adds fine structure instead of blending it away with patches a
    third of the image wide.
    """
    return min(width, height, BASE_SIDE)


def plan(times: list[float], width: int, height: int, whole: bool = False) -> list[Stage]:
    """Split a run's times (high to low) into stages from the coarsest level to full size.

    The last step always runs at full size, since it makes the image; `whole` (whole-image patches,
    nothing local to coarsen) runs every step there.
    """
    stages: list[Stage] = []
    current: list[float] = []
    level = 0
    for i, t in enumerate(times[:-1]):
        want = 1 if whole or i == len(times) - 2 else level_factor(t, width, height)
        if current and want != level:
            stages.append(Stage(level, width // level, height // level, (*current, t)))
            current = []
        level = want
        current.append(t)
    stages.append(Stage(level, width // level, height // level, (*current, times[-1])))
    return stages


def shrink(x: torch.Tensor, factor: int) -> torch.Tensor:
    """An image (…×H×W) averaged over factor×factor blocks."""
    if factor == 1:
        return x
    flat = F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), factor)
    return flat.reshape(*x.shape[:-2], *flat.shape[-2:])


def shrink_prior(prior: torch.Tensor, factor: int) -> torch.Tensor:
    """A per-pixel log-prior (S×H×W) at a level `factor` times smaller: the log of its mean weight.

    Not the mean of the logs: a block half inside a stroke must still let the stroke's material in (log ½),
    where averaging an excluded pixel's -1e4 with an allowed 0 would shut it out of every block a thin
    stroke crosses.
    """
    if factor == 1:
        return prior
    top = prior.amax(dim=0, keepdim=True).clamp(min=EXCLUDED)  # keeps exp() in range
    mean = shrink((prior - top).double().exp(), factor)
    return (mean.log() + shrink(top.double(), factor)).clamp(min=EXCLUDED).to(prior.dtype)


def shrink_noise(eps: torch.Tensor, factor: int) -> torch.Tensor:
    """White noise at a level `factor` times smaller: block means, scaled back to unit variance."""
    return shrink(eps, factor) * factor


def grow(x: torch.Tensor, factor: int) -> torch.Tensor:
    """An estimate (C×H×W) upsampled `factor` times, bilinearly."""
    if factor == 1:
        return x
    return F.interpolate(x[None], scale_factor=factor, mode="bilinear", align_corners=False)[0]


def grow_state(
    x: torch.Tensor, x0: torch.Tensor, t: float, eps_fine: torch.Tensor, factor: int
) -> torch.Tensor:
    """The state at time t on the level `factor` times finer, from the coarse state x and its estimate x0.

    The estimate is upsampled; the noise keeps the coarse run's implied noise as its block means (scaled
    to the finer level) and the finer level's own noise within each block, so it is white with unit
    variance and agrees with where the coarse run was heading.
    """
    a, b = alpha_sigma(t)
    implied = (x - a * x0) / max(b, 1e-8)
    nearest = lambda z: z.repeat_interleave(factor, -2).repeat_interleave(factor, -1)  # noqa: E731
    eps = eps_fine - nearest(shrink(eps_fine, factor)) + nearest(implied) / factor
    return a * grow(x0, factor) + b * eps


def shrink_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A boolean mask (…×H×W) at a level `factor` times smaller: true only where every pixel was."""
    if factor == 1:
        return mask
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    kept = -F.max_pool2d(-flat, factor)
    return (kept > 0.5).reshape(*mask.shape[:-2], *kept.shape[-2:])


@dataclass(frozen=True)
class Level:
    """A stage's inputs at its size: what the run draws from, its noise, and what it keeps when editing."""

    stage: Stage
    images: torch.Tensor  # S×C×h×w: the references (and for a sketch, its sources)
    eps: torch.Tensor
    prior: torch.Tensor  # S, or S×h×w per pixel
    init: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # 1 = repaint
    key_mask: torch.Tensor | None = None  # S×h×w: where each image offers keys

    @classmethod
    def of(
        cls,
        stage: Stage,
        images: torch.Tensor,
        eps: torch.Tensor,
        prior: torch.Tensor,
        init: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> Level:
        """The level for `stage` from the full-size inputs: images and priors averaged over blocks, the
        noise rescaled to stay white, a key position kept only where all its pixels offered keys."""
        f = stage.factor
        return cls(
            stage,
            shrink(images, f),
            shrink_noise(eps, f),
            prior if prior.dim() == 1 else shrink_prior(prior, f),
            None if init is None else shrink(init, f),
            None if mask is None else shrink(mask, f),
            None if key_mask is None else shrink_mask(key_mask, f),
        )

    def keep_known(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x with the init image's pixels outside the mask put back, noised to time t (inpainting)."""
        if self.mask is None or self.init is None:
            return x
        return self.mask * x + (1 - self.mask) * noise_to(self.init, self.eps, t)

    def start(self, t: float) -> torch.Tensor:
        """The first state: noise, or the init image noised to t."""
        return self.eps if self.init is None else noise_to(self.init, self.eps, t)

    def enter(self, before: Level, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The state on this level from the previous level's state x and its last estimate x0."""
        t = self.stage.times[0]
        grown = grow_state(x, x0, t, self.eps, before.stage.factor // self.stage.factor)
        return self.keep_known(grown, t)
