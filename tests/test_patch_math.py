"""The ELS math: the chunked attention against a direct float64 implementation of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend import els


def allowed(p, length, k):
    """Key coordinates a query at coordinate p may use along one axis (Kamb & Ganguli's border rule).

    Their machine (LocalEquivBordersScoreModule) matches a pixel whose patch crosses an edge only with
    reference patches at the same distance from that edge; otherwise with every patch wholly inside.
    """
    half = k // 2
    if p < half or p >= length - half:
        return [p]
    return list(range(half, length - half))


def direct_els(x, refs, a, b, k, borders, prior):
    """x̂0 straight from the formula, in float64 with explicit loops over pixels and allowed keys.

    borders: "paper" (zero padding, the rule above), "wrap" (tiling: every circular position of every
    reference) or "inside" (tiling: circular query patches, keys only patches wholly inside).
    """
    x, refs = x.double().numpy(), refs.double().numpy()
    n, c, h, w = refs.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="constant" if borders == "paper" else "wrap")
    rp = np.pad(
        refs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="wrap" if borders == "wrap" else "constant"
    )
    out = np.zeros((c, h, w))
    for py in range(h):
        for px in range(w):
            q = xp[:, py : py + k, px : px + k]
            if borders == "paper":
                ky, kx = allowed(py, h, k), allowed(px, w, k)
            elif borders == "wrap":
                ky, kx = range(h), range(w)
            else:
                ky, kx = range(pad, h - pad), range(pad, w - pad)
            logits, values = [], []
            for i in range(n):
                for qy in ky:
                    for qx in kx:
                        key = rp[i, :, qy : qy + k, qx : qx + k]
                        logits.append(-((q - a * key) ** 2).sum() / (2 * b * b) + prior[i])
                        values.append(refs[i, :, qy, qx])
            logits = np.array(logits)
            wts = np.exp(logits - logits.max())
            out[:, py, px] = (wts / wts.sum()) @ np.array(values)
    return out


def direct_ls(x, refs, a, b, k, circular, prior):
    """The LS machine from its formula: each pixel against the same position of every reference."""
    x, refs = x.double().numpy(), refs.double().numpy()
    n, c, h, w = refs.shape
    pad = k // 2
    mode = "wrap" if circular else "constant"
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    rp = np.pad(refs, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode)
    out = np.zeros((c, h, w))
    for py in range(h):
        for px in range(w):
            d = ((xp[None, :, py : py + k, px : px + k] - a * rp[:, :, py : py + k, px : px + k]) ** 2).sum(
                (1, 2, 3)
            )
            logits = -d / (2 * b * b) + prior
            wts = np.exp(logits - logits.max())
            out[:, py, px] = (wts / wts.sum()) @ refs[:, :, py, px]
    return out


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(3, 3, 11, 13, generator=g) * 2 - 1
    noise = torch.randn(3, 11, 13, generator=g)
    prior = torch.tensor([0.0, 0.7, -1.2])
    return refs, noise, prior


@pytest.mark.parametrize("k", [3, 5, 9])
@pytest.mark.parametrize("t", [0.15, 0.5, 0.9])
@pytest.mark.parametrize("borders", els.BORDERS)
def test_chunked_attention_matches_float64_formula(problem, k, t, borders):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(t)
    x_t = a * refs[1].roll(2, dims=-1) + b * noise
    # A tiny logit budget forces many query bands and key blocks through the streaming log-sum-exp.
    est = els.patch_attention(x_t, refs, a, b, k, borders, prior, key_rows=2, logit_budget=64)
    expected = direct_els(x_t, refs, a, b, k, borders, prior.numpy())
    assert np.abs(est.x0.double().numpy() - expected).max() < 1e-4
    assert torch.allclose(est.ref_weights.sum(0), torch.ones(11, 13), atol=1e-5)


@pytest.mark.parametrize("borders", els.BORDERS)
@pytest.mark.parametrize(("h", "w", "k"), [(11, 13, 3), (11, 13, 9), (8, 20, 7), (16, 16, 15)])
def test_regions_cover_every_pixel_once(borders, h, w, k):
    seen = np.zeros((h, w), int)
    for r in els.regions(h, w, k, borders):
        seen[r.ys.start : r.ys.stop, r.xs.start : r.xs.stop] += 1
        # Own rows (columns) only where a patch crosses the top or bottom (left or right) edge.
        assert (r.key_ys is None) == (borders == "paper" and (r.ys.start < k // 2 or r.ys.stop > h - k // 2))
        assert (r.key_xs is None) == (borders == "paper" and (r.xs.start < k // 2 or r.xs.stop > w - k // 2))
    assert (seen == 1).all()


def test_references_that_tile_are_told_from_those_that_do_not():
    g = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 40, 40, generator=g), 5, 1)[0]  # 36×36
    assert not els.tiles(smooth)  # its opposite edges are unrelated
    periodic = torch.stack([torch.sin(torch.arange(32) * 2 * math.pi / 16)[None].expand(32, 32)] * 3)
    assert els.tiles(periodic) and els.tiles(periodic.transpose(1, 2))
    assert els.borders_for(False, True) == "paper"
    assert els.borders_for(True, True) == "wrap" and els.borders_for(True, False) == "inside"


@pytest.mark.parametrize("circular", [False, True])
def test_local_score_variant_matches_formula(problem, circular):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.4)
    x_t = a * refs[0] + b * noise
    est = els.local_score(x_t, refs, a, b, 5, circular, prior)
    expected = direct_ls(x_t, refs, a, b, 5, circular, prior.numpy())
    assert np.abs(est.x0.double().numpy() - expected).max() < 1e-4


def test_whole_image_with_tiling_mixes_every_circular_shift(problem):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.6)
    x_t = a * refs[2].roll((3, 4), dims=(-2, -1)) + b * noise
    est = els.whole_image(x_t, refs, a, b, True, prior)
    shifts = [(i, dy, dx) for i in range(3) for dy in range(11) for dx in range(13)]
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


@pytest.mark.parametrize("borders", els.BORDERS)
def test_fast_path_with_every_key_and_frequency_is_exact(problem, borders):
    refs, noise, prior = problem
    a, b = els.alpha_sigma(0.5)
    x_t = a * refs[0] + b * noise
    exact = els.patch_attention(x_t, refs, a, b, 5, borders, prior)
    gen = torch.Generator().manual_seed(0)
    fast = els.fast_patch_attention(
        x_t, refs, a, b, 5, borders, prior, gen, max_keys=3 * 11 * 13, freqs=5, chroma_freqs=5, dims=None
    )
    assert (fast.x0 - exact.x0).abs().max() < 1e-4
    assert (fast.ref_weights - exact.ref_weights).abs().max() < 1e-4
    assert (fast.shares - exact.shares).abs().max() < 1e-5
    # With a key mask too: the interior samples only allowed positions, the edge bands shut out the rest.
    mask = torch.rand(3, 11, 13, generator=torch.Generator().manual_seed(4)) > 0.4
    exact = els.patch_attention(x_t, refs, a, b, 5, borders, prior, key_mask=mask)
    fast = els.fast_patch_attention(
        x_t,
        refs,
        a,
        b,
        5,
        borders,
        prior,
        gen,
        max_keys=3 * 11 * 13,
        freqs=5,
        chroma_freqs=5,
        key_mask=mask,
        dims=None,
    )
    assert (fast.x0 - exact.x0).abs().max() < 1e-4
    # Fewer frequencies and keys: an approximation, still a mix of the same references' pixels.
    fast = els.fast_patch_attention(
        x_t, refs, a, b, 5, borders, prior, gen, max_keys=60, freqs=2, chroma_freqs=1
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
    full = els.patch_attention(x_t, refs, a, b, k, "paper", torch.zeros(4))
    half = els.patch_attention(x_t, refs, a, b, k, "paper", torch.zeros(4), low_precision=True)
    assert (half.x0 - full.x0).abs().mean() < 0.01


def test_a_cancel_inside_a_step_stops_between_chunks(problem):
    refs, noise, prior = problem
    calls = []

    def stop_on_third_check():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(els.Cancelled):
        els.patch_attention(
            noise, refs, 0.5, 0.8, 3, "paper", prior, key_rows=2, should_stop=stop_on_third_check
        )
    assert len(calls) == 3


@pytest.mark.parametrize("k", [5, 9])
def test_features_folded_onto_principal_axes_equal_projected_features(k):
    # The fast path folds the projection into the y pass; it must equal projecting the full features,
    # and the full features must equal those of each patch gathered on its own.
    g = torch.Generator().manual_seed(5)
    image = torch.randn(3, 14 + k - 1, 17 + k - 1, generator=g)
    space = els.FeatureSpace.for_patch(k, freqs=k, chroma_freqs=3)
    full = els.image_features(image, space, range(2, 12), range(1, 17))  # rows × D × cols
    patches = image.unfold(1, k, 1).unfold(2, k, 1)[:, 2:12, 1:17]  # 3 × rows × cols × k × k
    each = els.patch_features(patches.permute(1, 2, 3, 4, 0).reshape(-1, k, k, 3), space)
    assert torch.allclose(full.permute(0, 2, 1).reshape(-1, space.dims), each, atol=1e-4)
    axes = torch.linalg.qr(torch.randn(space.dims, 6, generator=g)).Q
    folded = els.image_features(image, space, range(2, 12), range(1, 17), axes)
    assert torch.allclose(folded, axes.T @ full, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("with_axes", [False, True])
def test_edge_strip_features_equal_each_window_gathered_on_its_own(transposed, with_axes):
    # The edge bands take the features of every window down a strip in one strided product; they must
    # equal each k×k window's own features (rows and columns swapped back for a strip down a side edge).
    from backend.els_fast import _strip, patch_features, strip_features

    k, length = 7, 11
    g = torch.Generator().manual_seed(6)
    padded = torch.randn(2, 20, 24, 3, generator=g)  # channels last, as the fast path keeps references
    owner, pos = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 9])
    space = els.FeatureSpace.for_patch(k, freqs=5, chroma_freqs=3)
    axes = torch.linalg.qr(torch.randn(space.dims, 6, generator=g)).Q if with_axes else None
    start = 4
    out = strip_features(_strip(padded, owner, pos, start, length, k, transposed), space, transposed, axes)
    for row in range(length - k + 1):
        if transposed:  # the windows go right along rows pos..pos+k from column start
            ys, xs = pos[:, None] + torch.arange(k), start + row + torch.arange(k)
        else:
            ys, xs = start + row + torch.arange(k), pos[:, None] + torch.arange(k)
        ys = ys if ys.dim() == 2 else ys.expand(3, k)
        xs = xs if xs.dim() == 2 else xs.expand(3, k)
        windows = padded[owner[:, None, None], ys[:, :, None], xs[:, None, :]]  # M×k×k×3
        expected = patch_features(windows, space)
        expected = expected if axes is None else expected @ axes
        assert torch.allclose(out[row], expected, atol=1e-4)


def test_edge_strip_features_skip_the_zero_rows_past_an_edge():
    # The edge bands gather only a strip's rows inside the reference; the windows' other rows are the
    # zero padding, so the features must equal those of the whole strip with those rows zero.
    from backend.els_fast import strip_features

    k, rows, first, held = 7, 5, 2, 6
    g = torch.Generator().manual_seed(7)
    strip = torch.zeros(3, rows + k - 1, 3, k)
    strip[:, first : first + held] = torch.randn(3, held, 3, k, generator=g)
    space = els.FeatureSpace.for_patch(k, freqs=5, chroma_freqs=3)
    axes = torch.linalg.qr(torch.randn(space.dims, 6, generator=g)).Q
    for transposed, with_axes in ((False, True), (True, True), (False, False)):
        use = axes if with_axes else None
        whole = strip_features(strip, space, transposed, use)
        part = strip_features(strip[:, first : first + held], space, transposed, use, rows=rows, first=first)
        assert torch.allclose(part, whole, atol=1e-5)


@pytest.mark.parametrize("circular", [False, True])
def test_opponent_padded_references_equal_rotating_then_padding(circular):
    from backend.els_fast import opponent_padded

    refs = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(8)) * 2 - 1
    expected = els.pad_image(els.to_opponent(refs), 4, circular).permute(0, 2, 3, 1)
    assert torch.allclose(opponent_padded(refs, 4, circular), expected, atol=1e-6)


@pytest.mark.parametrize("pixel_weights", [True, False])
def test_attention_with_keys_per_tile_equals_one_call_per_tile(pixel_weights):
    # The edge bands attend every row at once, each row (a tile of queries) with its own keys.
    g = torch.Generator().manual_seed(5)
    tiles, d, width, m, n = 4, 6, 9, 20, 3
    queries = torch.randn(tiles, d, width, generator=g)
    keys = torch.randn(tiles, m, d, generator=g)
    values = torch.rand(tiles, m, 3, generator=g)
    owner = torch.randint(0, n, (m,), generator=g)
    log_count = torch.randn(tiles, m, generator=g)
    prior, pixel_prior = torch.tensor([0.0, 0.5, -1.0]), torch.randn(n, tiles * width, generator=g)
    block = els.KeyBlock(keys, keys.pow(2).sum(-1), values, owner, log_count)
    mix, per_ref, shares = els.attend(
        queries, [block], 0.7, prior, pixel_prior=pixel_prior, pixel_weights=pixel_weights
    )
    total = torch.zeros(n)
    for t in range(tiles):
        one = els.KeyBlock(keys[t], keys[t].pow(2).sum(-1), values[t], owner, log_count[t])
        cols = slice(t * width, (t + 1) * width)
        alone = els.attend(
            queries[t], [one], 0.7, prior, pixel_prior=pixel_prior[:, cols], pixel_weights=pixel_weights
        )
        assert torch.allclose(mix[:, cols], alone[0], atol=1e-6)
        if pixel_weights:
            assert torch.allclose(per_ref[:, cols], alone[1], atol=1e-6)
        total += alone[2]
    assert torch.allclose(shares, total, atol=1e-5)
