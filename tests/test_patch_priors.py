"""Per-pixel priors and key masks in the ELS math: each pixel sees its own prior; masked keys never vote."""

from __future__ import annotations

import math

import pytest
import torch

from backend import els

H, W = 9, 11


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(3)
    refs = torch.rand(3, 3, H, W, generator=g) * 2 - 1
    x = torch.randn(3, H, W, generator=g)
    pixel_prior = torch.randn(3, H, W, generator=g) * 2
    return refs, x, pixel_prior


PIXELS = [(0, 0), (4, 5), (8, 10), (2, 9)]


def estimate(kind, x, refs, prior, t=0.4, k=5, key_mask=None, borders="paper"):
    a, b = els.alpha_sigma(t)
    if kind == "exact":
        return els.patch_attention(x, refs, a, b, k, borders, prior, key_mask=key_mask)
    if kind == "fast":
        g = torch.Generator().manual_seed(0)  # the same keys for every call
        return els.fast_patch_attention(x, refs, a, b, k, borders, prior, g, max_keys=60, key_mask=key_mask)
    if kind == "fast_shares":  # the fast path's shares-only mode (no per-pixel weights)
        g = torch.Generator().manual_seed(0)
        return els.fast_patch_attention(x, refs, a, b, k, borders, prior, g, max_keys=60, pixel_weights=False)
    return els.local_score(x, refs, a, b, k, borders == "wrap", prior)


@pytest.mark.parametrize("kind", ["exact", "fast", "local"])
def test_a_pixel_prior_acts_at_each_pixel_as_that_pixels_global_prior(problem, kind):
    refs, x, pixel_prior = problem
    whole = estimate(kind, x, refs, pixel_prior)
    for y, xx in PIXELS:
        alone = estimate(kind, x, refs, pixel_prior[:, y, xx])
        assert torch.allclose(whole.x0[:, y, xx], alone.x0[:, y, xx], atol=1e-5)
        assert torch.allclose(whole.ref_weights[:, y, xx], alone.ref_weights[:, y, xx], atol=1e-5)


def test_a_constant_pixel_prior_is_the_global_prior_in_the_shares_only_mode(problem):
    refs, x, _ = problem
    prior = torch.tensor([0.5, -1.0, 2.0])
    flat = estimate("fast_shares", x, refs, prior)
    per_pixel = estimate("fast_shares", x, refs, prior[:, None, None].expand(3, H, W).contiguous())
    assert torch.allclose(flat.x0, per_pixel.x0, atol=1e-5)
    assert torch.allclose(flat.shares, per_pixel.shares, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "fast"])
def test_an_excluded_reference_gives_nothing_to_that_pixel(problem, kind):
    refs, x, _ = problem
    prior = torch.zeros(3, H, W)
    prior[1, :, : W // 2] = els.EXCLUDED  # reference 1 shut out of the left half
    est = estimate(kind, x, refs, prior, t=0.9)
    assert float(est.ref_weights[1, :, : W // 2].max()) < 1e-12
    assert float(est.ref_weights[1, :, W // 2 :].mean()) > 1e-3


@pytest.mark.parametrize("kind", ["exact", "fast"])
def test_masked_key_positions_never_vote(problem, kind):
    refs, x, _ = problem
    # One reference whose allowed positions hold -1 and whose masked positions hold +1: an estimate
    # drawn only from allowed keys is -1 everywhere, whatever the noise. With tiling, so that every
    # pixel has allowed keys (under the border rule a corner pixel's only key is its own position).
    mask = torch.rand(1, H, W, generator=torch.Generator().manual_seed(1)) > 0.5
    marked = torch.where(mask, -1.0, 1.0)[:, None].expand(1, 3, H, W).contiguous()
    for t in (0.2, 0.7):
        est = estimate(kind, x, marked, torch.zeros(1), t=t, key_mask=mask, borders="wrap")
        assert torch.allclose(est.x0, torch.full_like(est.x0, -1.0), atol=1e-5)


def test_a_full_key_mask_changes_nothing_and_an_empty_one_excludes_the_reference(problem):
    refs, x, _ = problem
    prior = torch.zeros(3)
    plain = estimate("exact", x, refs, prior)
    full = estimate("exact", x, refs, prior, key_mask=torch.ones(3, H, W, dtype=torch.bool))
    assert torch.allclose(plain.x0, full.x0, atol=1e-6)
    mask = torch.ones(3, H, W, dtype=torch.bool)
    mask[2] = False
    without = estimate("exact", x, refs, prior, key_mask=mask)
    excluded = estimate("exact", x, refs, torch.tensor([0.0, 0.0, els.EXCLUDED]))
    assert torch.allclose(without.x0, excluded.x0, atol=1e-5)
    assert float(without.ref_weights[2].max()) == 0.0


def test_a_coarse_level_keeps_a_material_in_every_block_its_stroke_crosses():
    from backend.els_pyramid import shrink_prior

    prior = torch.full((2, 8, 8), els.EXCLUDED)
    prior[0, :, :] = 0.0  # reference 0 allowed everywhere
    prior[1, :, 3] = 0.0  # reference 1 only along a one-pixel line
    prior[0, :, 3] = els.EXCLUDED
    coarse = shrink_prior(prior, 4)  # 2×2 blocks of 4×4 pixels
    assert torch.allclose(coarse[1, :, 0], torch.full((2,), math.log(4 / 16)), atol=1e-5)
    assert torch.allclose(coarse[0, :, 0], torch.full((2,), math.log(12 / 16)), atol=1e-5)
    assert torch.all(coarse[1, :, 1] == els.EXCLUDED) and torch.all(coarse[0, :, 1] == 0.0)
