"""The ELS math: the chunked attention against a direct float64 implementation of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend import els


def direct_els(x, refs, a, b, k, circular, prior, ls=False):
    """x̂0 straight from the formula, in float64 with explicit loops over patch positions."""
    x, refs = x.double().numpy(), refs.double().numpy()
    n, c, h, w = refs.shape
    pad = (k - 1) // 2
    mode = {"mode": "wrap"} if circular else {"mode": "constant"}
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), **mode)
    rp = np.pad(refs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), **mode)
    # All key patches at once: n × h × w × (c·k·k).
    keys = (
        np.stack([rp[:, :, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)], axis=-1)
        .transpose(0, 2, 3, 1, 4)
        .reshape(n, h, w, -1)
    )
    out = np.zeros((c, h, w))
    for py in range(h):
        for px in range(w):
            q = xp[:, py : py + k, px : px + k].reshape(c, -1).reshape(-1)
            q = np.stack([xp[:, py + dy, px + dx] for dy in range(k) for dx in range(k)], -1).reshape(-1)
            if ls:
                d = ((q[None] - a * keys[:, py, px]) ** 2).sum(-1)
                logits = -d / (2 * b * b) + prior
                wts = np.exp(logits - logits.max())
                out[:, py, px] = (wts / wts.sum()) @ refs[:, :, py, px]
                continue
            d = ((q[None, None, None] - a * keys) ** 2).sum(-1)
            logits = -d / (2 * b * b) + prior[:, None, None]
            wts = np.exp(logits - logits.max())
            out[:, py, px] = np.einsum("nhw,nchw->c", wts / wts.sum(), refs)
    return out


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(3, 3, 7, 9, generator=g) * 2 - 1
    noise = torch.randn(3, 7, 9, generator=g)
    prior = torch.tensor([0.0, 0.7, -1.2])
    return refs, noise, prior


@pytest.mark.parametrize("k", [3, 5, 9])
@pytest.mark.parametrize("t", [0.15, 0.5, 0.9])
@pytest.mark.parametrize("circular", [False, True])
def test_chunked_attention_matches_float64_formula(problem, k, t, circular):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(t)
    x_t = a * refs[1].roll(2, dims=-1) + b * noise
    # A tiny logit budget forces many query bands and key blocks through the streaming log-sum-exp.
    est = els.patch_attention(x_t, refs, a, b, k, circular, prior, key_rows=2, logit_budget=64)
    expected = direct_els(x_t, refs, a, b, k, circular, prior.numpy())
    assert np.abs(est.x0.double().numpy() - expected).max() < 1e-4
    assert torch.allclose(est.ref_weights.sum(0), torch.ones(7, 9), atol=1e-5)


@pytest.mark.parametrize("circular", [False, True])
def test_local_score_variant_matches_formula(problem, circular):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.4)
    x_t = a * refs[0] + b * noise
    est = els.local_score(x_t, refs, a, b, 5, circular, prior)
    expected = direct_els(x_t, refs, a, b, 5, circular, prior.numpy(), ls=True)
    assert np.abs(est.x0.double().numpy() - expected).max() < 1e-4


def test_whole_image_with_tiling_mixes_every_circular_shift(problem):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.6)
    x_t = a * refs[2].roll((3, 4), dims=(-2, -1)) + b * noise
    est = els.whole_image(x_t, refs, a, b, True, prior)
    shifts = [(i, dy, dx) for i in range(3) for dy in range(7) for dx in range(9)]
    rolled = torch.stack([refs[i].roll((dy, dx), dims=(-2, -1)) for i, dy, dx in shifts]).double()
    logits = (
        -((x_t.double() - a * rolled) ** 2).flatten(1).sum(1) / (2 * b * b)
        + prior.double()[[i for i, _, _ in shifts]]
    )
    expected = torch.einsum("s,schw->chw", torch.softmax(logits, 0), rolled)
    assert (est.x0.double() - expected).abs().max() < 1e-4


def test_schedule_runs_from_noise_to_clean():
    assert els.alpha_sigma(0.0) == (1.0, 0.0)
    a, b = els.alpha_sigma(1.0)
    assert a < 0.02 and b > 0.99
    assert all(math.isclose(sum(v * v for v in els.alpha_sigma(t)), 1.0) for t in (0.1, 0.5, 0.9))
    assert els.timesteps(4, 0.8) == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])


def test_patch_size_grows_with_noise_and_locality():
    sizes = [els.patch_size(t, 0.5, 32) for t in (0.05, 0.5, 0.95)]
    assert sizes[0] == 3 and sizes[0] < sizes[1] < sizes[2] <= 31
    assert all(s % 2 == 1 for s in sizes)
    # The calibration scales with the image: the same fraction of a 128² image.
    assert els.patch_size(0.05, 0.5, 128) in (11, 13)
    assert els.patch_size(0.5, 0.3, 64) < els.patch_size(0.5, 0.5, 64) < els.patch_size(0.5, 0.7, 64)
    # Locality 1.0: the patch is the whole image at every noise level.
    assert all(els.patch_size(t, 1.0, 64) is None for t in (0.01, 0.5, 1.0))


def test_ddim_step_to_zero_lands_on_the_estimate():
    x0 = torch.rand(3, 4, 4)
    x_t = els.noise_to(x0, torch.randn(3, 4, 4), 0.7)
    assert torch.allclose(els.ddim_step(x_t, x0, 0.7, 0.0), x0, atol=1e-6)
    # With the true x0 the implied noise is kept, so stepping then re-noising agree.
    eps = torch.randn(3, 4, 4)
    step = els.ddim_step(els.noise_to(x0, eps, 0.7), x0, 0.7, 0.3)
    assert torch.allclose(step, els.noise_to(x0, eps, 0.3), atol=1e-5)


def test_slerp_keeps_the_ends_and_the_norm():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    assert torch.allclose(els.slerp(u, v, 0.0), u, atol=1e-5)
    assert torch.allclose(els.slerp(u, v, 1.0), v, atol=1e-5)
    mid = els.slerp(u, v, 0.5)
    assert abs(mid.norm() / u.norm() - 1) < 0.05


@pytest.mark.parametrize("circular", [False, True])
def test_fast_path_with_every_key_and_frequency_is_exact(problem, circular):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.5)
    x_t = a * refs[0] + b * noise
    exact = els.patch_attention(x_t, refs, a, b, 5, circular, prior)
    gen = torch.Generator().manual_seed(0)
    fast = els.fast_patch_attention(
        x_t, refs, a, b, 5, circular, prior, gen, max_keys=3 * 63, freqs=5, chroma_freqs=5
    )
    assert (fast.x0 - exact.x0).abs().max() < 1e-4
    # Fewer frequencies and keys: an approximation, still a mix of the same references' pixels.
    fast = els.fast_patch_attention(
        x_t, refs, a, b, 5, circular, prior, gen, max_keys=60, freqs=2, chroma_freqs=1
    )
    assert fast.x0.min() >= refs.min() - 1e-5 and fast.x0.max() <= refs.max() + 1e-5


def test_wider_patches_keep_more_frequencies():
    # Small low-noise patches keep the cheap 8×8 / 3×3; wider ones about half their side, capped at 32.
    assert els.kept_freqs(13) == (8, 3)
    assert els.kept_freqs(33) == (16, 5)
    assert els.kept_freqs(85) == (32, 10)
    sizes = range(3, 200, 2)
    assert all(els.kept_freqs(k) <= els.kept_freqs(k + 2) for k in sizes)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_low_precision_path_stays_close_to_fp32(t):
    # The GPU path (fp16 products on centred patches) run on the CPU: same answer within fp16 error.
    g = torch.Generator().manual_seed(3)
    refs = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 20, 20, generator=g) * 2 - 1, 3, 1, 1)
    a, b = els.alpha_sigma(t)
    x_t = a * refs[2].roll(3, -1) + b * torch.randn(3, 20, 20, generator=g)
    k = 7
    full = els.patch_attention(x_t, refs, a, b, k, False, torch.zeros(4))
    half = els.patch_attention(x_t, refs, a, b, k, False, torch.zeros(4), low_precision=True)
    assert (half.x0 - full.x0).abs().mean() < 0.01


def test_a_cancel_inside_a_step_stops_between_chunks(problem):
    refs, noise, prior = problem
    calls = []

    def stop_on_third_check():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(els.Cancelled):
        els.patch_attention(
            noise, refs, 0.5, 0.8, 3, False, prior, key_rows=2, should_stop=stop_on_third_check
        )
    assert len(calls) == 3
