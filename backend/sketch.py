"""Following a sketch: keep the init image's low frequencies at every step (ILVR, Choi et al. 2021).

Image-to-image starts from the sketch noised to the strength's time, but a patch denoiser soon trades the
sketch's layout for whatever patches match best. ILVR keeps it: after each step, the low-pass band of x_t
is replaced by the low-pass band of the sketch noised to the same time,

    x_t ← x_t − φ(x_t) + φ(a_t·y + b_t·ε),

so the broad layout and colours are the sketch's while everything finer than φ's scale comes from the
references. The Structure slider sets that scale: from 1/32 of the image side ("exact colours": only fine
texture is free) through 1/8 (the default) to 1/2 ("only the broad layout"); the request also says for
what fraction of the steps (the first ones) it applies. φ is a Gaussian blur, isotropic and
shift-equivariant like the ELS machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend import els
from backend.els import EXCLUDED

# A Gaussian of σ = 0.375·size passes half the power at ILVR's cut-off for down/up-sampling by `size`
# (1/(2·size) cycles per pixel).
SIGMA_PER_SIZE = 0.375


def lowpass(x: torch.Tensor, size: float, circular: bool = False) -> torch.Tensor:
    """The features of x (…×H×W) larger than `size` pixels: a Gaussian blur, mirrored at the borders.

    Done in Fourier space, so its cost does not grow with the size. With `circular` the image wraps (a
    tiling image's low-pass tiles too); otherwise the borders are mirrored, which keeps a flat colour
    flat up to the edge instead of darkening it as zero padding would.
    """
    sigma = SIGMA_PER_SIZE * size
    if sigma < 0.3:  # narrower than a pixel: nothing to remove
        return x.clone()
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w)
    pad_y = pad_x = 0
    if not circular:
        pad_y, pad_x = min(h - 1, math.ceil(3 * sigma)), min(w - 1, math.ceil(3 * sigma))
        flat = F.pad(flat, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    ph, pw = flat.shape[-2:]
    fy = torch.fft.fftfreq(ph, device=x.device, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(pw, device=x.device, dtype=torch.float64)[None, :]
    gain = torch.exp(-2.0 * math.pi**2 * sigma**2 * (fy * fy + fx * fx)).to(x.dtype)
    out = torch.fft.irfft2(torch.fft.rfft2(flat) * gain, s=(ph, pw))
    return out[..., pad_y : pad_y + h, pad_x : pad_x + w].reshape(*lead, h, w)


@dataclass(frozen=True)
class StructureGuide:
    """The low-pass band of a sketch, and of the run's noise, to put back into x_t after each step."""

    low_init: torch.Tensor  # φ(y), C×H×W
    low_noise: torch.Tensor  # φ(ε): the noise the run started from, so x_t and y_t share it
    size: float
    circular: bool
    last_step: int  # the guide applies to steps 1..last_step
    # H×W in [0, 1], where the references paint: the sketch's paper is already the sketch exactly, and
    # a correction spilling into it from a neighbouring stroke would tint it.
    where: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        init: torch.Tensor,
        noise: torch.Tensor,
        size: float,
        circular: bool,
        last_step: int,
        where: torch.Tensor | None = None,
    ) -> StructureGuide:
        """A guide for a sketch `init` and the run's starting noise (both C×H×W in [-1, 1])."""
        low_init, low_noise = lowpass(init, size, circular), lowpass(noise, size, circular)
        return cls(low_init, low_noise, size, circular, last_step, where)

    def applies(self, step: int) -> bool:
        """Whether step (1-based) is among the first `last_step` steps it applies to."""
        return step <= self.last_step

    def impose(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x_t with its low-pass band replaced by that of the sketch noised to time t."""
        a, b = els.alpha_sigma(t)
        return self._corrected(x, a * self.low_init + b * self.low_noise)

    def show(self, x0: torch.Tensor) -> torch.Tensor:
        """A clean-image estimate with the sketch's low-pass band: what the finished image will look like."""
        return self._corrected(x0, self.low_init)

    def _corrected(self, x: torch.Tensor, low_target: torch.Tensor) -> torch.Tensor:
        change = low_target - lowpass(x, self.size, self.circular)
        return x + (change if self.where is None else self.where * change)


def guide_steps(fraction: float, steps: int) -> int:
    """How many of a run's steps (the first ones) a structure fraction covers: 0 only for 0."""
    return 0 if fraction <= 0 else max(1, round(fraction * steps))


# --- inpainting: a feathered edge, and the surroundings voting near it --------------------------------


def feather(side: int) -> float:
    """How wide (px) an inpainting mask's edge is blended: 1/64 of the image side, at least 1.5 px."""
    return max(1.5, side / 64)


def soft_mask(mask: torch.Tensor, width: float) -> torch.Tensor:
    """An inpainting mask (H×W, 1 = repaint) blurred across its edge; exactly 0 and 1 away from it.

    The repainted area and the kept pixels blend over about `width` pixels on either side of the edge
    instead of meeting at a hard seam; pixels farther out are kept exactly.
    """
    soft = lowpass(mask[None].float(), width / SIGMA_PER_SIZE / 2.5)[0]  # σ = width / 2.5
    soft = torch.where(soft < 1 / 512, torch.zeros_like(soft), soft)
    return torch.where(soft > 1 - 1 / 512, torch.ones_like(soft), soft).clamp(0.0, 1.0)


def context_vote(mask: torch.Tensor, width: float) -> torch.Tensor:
    """H×W log-prior of the kept surroundings as a source: 0 outside the mask, fading in a band inside it.

    In the band the surroundings' own patches compete with the prompt's materials, so the repaint continues
    what is around it; deeper in they are shut out (a merely low prior would still win on flat context
    patches) and the prompt's materials have the area.
    """
    reach = lowpass(mask[None].float(), 2 * width / SIGMA_PER_SIZE / 2.5)[0].clamp(0.0, 1.0)
    vote = torch.log((1.0 - reach).clamp(min=1e-30))
    return vote.masked_fill(vote < CONTEXT_FLOOR, EXCLUDED)


CONTEXT_FLOOR = -4.0  # below this vote the surroundings are shut out
