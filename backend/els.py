"""The math of the equivariant local score (ELS) machine, as small pure functions.

Kamb & Ganguli (2025): a denoiser built only from locality and translation equivariance. For a noisy image
x_t = a_t·x_0 + b_t·ε and reference images r_i, the clean-image estimate at pixel p is

    x̂0(p) = Σ_{i,q} w_{i,q}(p) · r_i(q),
    w = softmax_{i,q}( −‖x_t[Ω_p] − a_t·r_i[Ω_q]‖² / (2 b_t²) + prior_i )

with Ω a k×k patch and q over the positions the border rule allows p (els_attention: whole patches for
interior pixels, the same distance from the edge near one). That is attention: queries are the noisy
image's patches, keys the scaled reference patches, values the keys' centre pixels.

This module holds the schedule, the step and the two simple estimators (whole-image patches, the local
score); els_attention the exact patch attention and its border rule, els_fast its approximation, and
els_pyramid coarse to fine. Their public names are re-exported here.

Images are float tensors C×H×W in [-1, 1]; references are N×C×H×W.
"""

from __future__ import annotations

import math

import torch

from backend.els_attention import (
    BORDERS,
    EXCLUDED,
    Borders,
    Cancelled,
    Estimate,
    KeyBlock,
    Region,
    attend,
    band_patches,
    borders_for,
    inside_range,
    local_score,
    pad_image,
    patch_attention,
    regions,
    split_prior,
    tiles,
)
from backend.els_fast import (
    FeatureSpace,
    cosine_basis,
    fast_patch_attention,
    image_features,
    kept_freqs,
    key_budget,
    key_counts,
    patch_features,
    principal_axes,
    to_opponent,
)

__all__ = [
    "BORDERS", "EXCLUDED", "alpha_sigma", "attend", "band_patches", "Borders", "borders_for", "Cancelled",
    "cosine_basis", "ddim_step", "Estimate", "fast_patch_attention", "FeatureSpace", "image_features",
    "img2img_steps", "inside_range", "kept_freqs", "key_budget", "key_counts", "KeyBlock", "local_score",
    "locality_gain", "noise_to", "pad_image", "patch_attention", "patch_features", "patch_fraction",
    "patch_size", "principal_axes", "Region", "regions", "slerp", "split_prior", "tiles", "timesteps",
    "to_opponent", "whole_image",
]  # fmt: skip

# The paper's calibrated patch sizes for 32² images: 3 px at low noise growing to ~21 px at high noise.
PATCH_FRACTION_LOW = 3 / 32
PATCH_FRACTION_HIGH = 21 / 32
# Locality 0.5 is the calibrated schedule; each step of the slider multiplies it by 2**LOCALITY_OCTAVES.
# 7 octaves over the slider puts locality 1.0 above the whole image at every noise level (memorisation).
LOCALITY_OCTAVES = 7.0
MIN_PATCH = 3


# --- schedule -------------------------------------------------------------------------------------------


def alpha_sigma(t: float) -> tuple[float, float]:
    """Cosine schedule: a_t = cos((t/1.008)·π/2), b_t = sqrt(1 − a_t²)."""
    a = math.cos((t / 1.008) * math.pi / 2)
    return a, math.sqrt(max(0.0, 1.0 - a * a))


def timesteps(steps: int, start: float = 1.0) -> list[float]:
    """DDIM times from `start` down to 0 in `steps` equal steps (steps + 1 values)."""
    return [start * (1.0 - i / steps) for i in range(steps + 1)]


def img2img_steps(steps: int, strength: float) -> int:
    """How many of the request's steps an img2img run of this strength takes (at least one)."""
    return max(1, round(steps * strength))


def locality_gain(locality: float) -> float:
    """How much the locality slider scales the patch-size schedule (1 at the default 0.5)."""
    return 2.0 ** ((locality - 0.5) * LOCALITY_OCTAVES)


def patch_fraction(t: float, locality: float) -> float:
    """Patch side as a fraction of the image side at time t: geometric from low to high noise."""
    base = PATCH_FRACTION_LOW * (PATCH_FRACTION_HIGH / PATCH_FRACTION_LOW) ** t
    return base * locality_gain(locality)


def patch_size(t: float, locality: float, side: int) -> int | None:
    """Odd patch size k for time t on an image whose smaller side is `side`; None = the whole image."""
    fraction = patch_fraction(t, locality)
    if fraction >= 1.0:
        return None
    k = max(MIN_PATCH, round(fraction * side))
    k += 1 - k % 2  # odd, so the patch has a centre pixel
    return min(k, side - 1 + side % 2)


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Deterministic DDIM: keep the implied noise, move the estimate to time t_next."""
    a, b = alpha_sigma(t)
    a_next, b_next = alpha_sigma(t_next)
    eps = (x_t - a * x0) / max(b, 1e-8)
    return a_next * x0 + b_next * eps


def noise_to(x0: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
    """The forward process x_t = a_t·x0 + b_t·ε."""
    a, b = alpha_sigma(t)
    return a * x0 + b * eps


def slerp(u: torch.Tensor, v: torch.Tensor, s: float) -> torch.Tensor:
    """Spherical interpolation of two noise tensors, so the mix keeps a Gaussian's norm."""
    cos = torch.sum(u * v) / (u.norm() * v.norm())
    omega = torch.acos(cos.clamp(-1.0, 1.0))
    if float(omega) < 1e-4:
        return (1 - s) * u + s * v
    return (torch.sin((1 - s) * omega) * u + torch.sin(s * omega) * v) / torch.sin(omega)


# --- whole-image patches ---------------------------------------------------------------------------


def whole_image(
    x_t: torch.Tensor, refs: torch.Tensor, a: float, b: float, circular: bool, log_prior: torch.Tensor
) -> Estimate:
    """The ideal denoiser (patch = whole image): reproduces a reference as the noise goes to zero.

    Without `circular` every reference is compared aligned (no other whole patch lies inside it). With
    it (tiling on references that tile) the whole-image patch wraps, so every circular shift of every
    reference is a key; FFTs give all shifts' distances and the mix at once. A per-pixel prior counts
    as its mean over the image: the patch is the whole image.
    """
    n, c, h, w = refs.shape
    if log_prior.dim() == 3:
        log_prior = log_prior.exp().mean((1, 2)).clamp(min=1e-30).log()
    if not circular:
        dist = (x_t[None] - a * refs).pow(2).flatten(1).sum(1)
        weights = torch.softmax(-dist / (2 * b * b) + log_prior, dim=0)
        x0 = torch.einsum("n,nchw->chw", weights, refs)
        return Estimate(x0, weights[:, None, None].expand(n, h, w).clone(), weights)
    fx = torch.fft.rfft2(x_t.double())
    fr = torch.fft.rfft2(refs.double())
    # cross[i, s] = Σ_p x(p)·r_i(p − s): the dot product of x with r_i rolled by s.
    cross = torch.fft.irfft2((fx[None] * fr.conj()).sum(1), s=(h, w))
    norms = refs.double().pow(2).flatten(1).sum(1)
    logits = (a * cross - 0.5 * a * a * norms[:, None, None]) / (b * b) + log_prior.double()[:, None, None]
    shift_w = torch.softmax(logits.flatten(), 0).reshape(n, h, w)
    x0 = torch.fft.irfft2(torch.fft.rfft2(shift_w)[:, None] * fr, s=(h, w)).sum(0)
    share = shift_w.flatten(1).sum(1)
    share = share.to(x_t.dtype)
    return Estimate(x0.to(x_t.dtype), share[:, None, None].expand(n, h, w).clone(), share)
