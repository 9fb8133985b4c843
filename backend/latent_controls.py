"""Latent controls: variation noise (slerp), prompt blends, concept directions and seamless tiling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0) to `b` (t=1), exact at both ends.

    Noise drawn from a Gaussian lives near a sphere; a straight line between two samples would pass inside it
    and give washed-out images, the great circle keeps the norm.
    """
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    a32, b32 = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a32, b32) / (a32.norm() * b32.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if theta.abs() < 1e-4:  # nearly parallel: the sphere is flat here
        mixed = (1 - t) * a32 + t * b32
    else:
        mixed = (torch.sin((1 - t) * theta) * a32 + torch.sin(t * theta) * b32) / torch.sin(theta)
    return mixed.view_as(a).to(a.dtype)


def lerp_exact(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation that returns `a` itself at 0 and `b` itself at 1."""
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    return torch.lerp(a, b, t)


@dataclass(frozen=True)
class Embeds:
    """Text conditioning for one prompt: token embeddings (1×77×D) and, for SDXL, the pooled vector."""

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    def blend(self, other: Embeds, t: float) -> Embeds:
        """Interpolate towards `other` (prompt blend)."""
        pooled = (
            None if self.pooled is None or other.pooled is None else lerp_exact(self.pooled, other.pooled, t)
        )
        return Embeds(lerp_exact(self.tokens, other.tokens, t), pooled)

    def minus(self, other: Embeds) -> Embeds:
        """The direction from `other` to self."""
        pooled = None if self.pooled is None or other.pooled is None else self.pooled - other.pooled
        return Embeds(self.tokens - other.tokens, pooled)

    def plus(self, direction: Embeds, weight: float | torch.Tensor) -> Embeds:
        """Move `weight` along `direction` (a tensor weight: one per row of a batch)."""
        pooled = self.pooled
        if pooled is not None and direction.pooled is not None:
            pooled = pooled + _rows(weight, 2) * direction.pooled
        return Embeds(self.tokens + _rows(weight, 3) * direction.tokens, pooled)

    @staticmethod
    def stack(parts: list[Embeds]) -> Embeds:
        """One batch of conditionings, in order (a single one as it is)."""
        if len(parts) == 1:
            return parts[0]
        pooled = [p.pooled for p in parts]
        stacked = torch.cat(pooled) if all(p is not None for p in pooled) else None  # type: ignore[misc]
        return Embeds(torch.cat([p.tokens for p in parts]), stacked)


def _rows(weight: float | torch.Tensor, ndim: int) -> float | torch.Tensor:
    """A per-row weight shaped to broadcast over a batch tensor of `ndim` dimensions."""
    return weight if isinstance(weight, float) else weight.view(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class ConceptShift:
    """A weighted text-embedding direction that applies from step index `first_step` on."""

    direction: Embeds
    weight: float | torch.Tensor  # a tensor: one weight per request of a batch
    first_step: int


def first_step(start: float, steps: int) -> int:
    """The step index a concept starting at fraction `start` of the run applies from."""
    return min(steps, max(0, round(start * steps)))


def conditioning_at(base: Embeds, shifts: Iterable[ConceptShift], step: int) -> Embeds:
    """The prompt conditioning at step index `step`: the base plus every concept already switched on."""
    out = base
    for shift in shifts:
        if step >= shift.first_step and (not isinstance(shift.weight, float) or shift.weight != 0.0):
            out = out.plus(shift.direction, shift.weight)
    return out


# --- Seamless tiling -------------------------------------------------------------------------------------


class _WrapPadConv(nn.Module):
    """The VAE encoder's stride-2 downsample: its explicit (0,1,0,1) pad, wrapped around instead of zero."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad one column and row by wrapping, then convolve."""
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="circular"))


@dataclass
class Tiling:
    """Reversible circular-padding patches on a set of modules (UNet, VAE encoder and decoder, TAESD)."""

    convs: list[nn.Conv2d] = field(default_factory=list)
    downsamples: list[tuple[nn.Module, nn.Module]] = field(default_factory=list)  # (Downsample2D, its conv)

    @property
    def on(self) -> bool:
        """True while patches are applied."""
        return bool(self.convs or self.downsamples)

    def apply(self, modules: Iterable[nn.Module]) -> None:
        """Make every padded convolution wrap around: the image becomes a torus whose edges meet."""
        from diffusers.models.downsampling import Downsample2D

        if self.on:
            return
        for root in modules:
            for module in root.modules():
                if isinstance(module, Downsample2D) and module.use_conv and module.padding == 0:
                    # Its forward zero-pads explicitly when padding == 0; a non-zero value skips that and
                    # the wrapper pads circularly instead.
                    self.downsamples.append((module, module.conv))
                    module.conv = _WrapPadConv(module.conv)
                    module.padding = -1
                elif isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and _pads(module):
                    module.padding_mode = "circular"
                    self.convs.append(module)

    def remove(self) -> None:
        """Undo every patch, leaving the modules exactly as they were."""
        for conv in self.convs:
            conv.padding_mode = "zeros"
        for module, conv in self.downsamples:
            module.conv = conv
            module.padding = 0
        self.convs.clear()
        self.downsamples.clear()


def _pads(conv: nn.Conv2d) -> bool:
    padding = conv.padding
    return isinstance(padding, tuple) and any(p > 0 for p in padding)
