"""The math of the equivariant local score (ELS) machine, as small pure functions.

Kamb & Ganguli (2025): a denoiser built only from locality and translation equivariance. For a noisy image
x_t = a_t·x_0 + b_t·ε and reference images r_i, the clean-image estimate at pixel p is

    x̂0(p) = Σ_{i,q} w_{i,q}(p) · r_i(q),
    w = softmax_{i,q}( −‖x_t[Ω_p] − a_t·r_i[Ω_q]‖² / (2 b_t²) + prior_i )

with Ω a k×k patch. That is attention: queries are the noisy image's patches, keys the scaled reference
patches, values the keys' centre pixels. Both the noisy image and the references are padded the same way
(zeros, or circularly when tiling), so border queries prefer border keys and tiling stays equivariant.

Images are float tensors C×H×W in [-1, 1]; references are N×C×H×W. The prior may differ per pixel (an
N×H×W log-prior: a sketch's colours choosing materials), and a reference may offer keys at some positions
only (a key mask: inpainting's context offers only the pixels it keeps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The paper's calibrated patch sizes for 32² images: 3 px at low noise growing to ~21 px at high noise.
PATCH_FRACTION_LOW = 3 / 32
PATCH_FRACTION_HIGH = 21 / 32
# Locality 0.5 is the calibrated schedule; each step of the slider multiplies it by 2**LOCALITY_OCTAVES.
# 7 octaves over the slider puts locality 1.0 above the whole image at every noise level (memorisation).
LOCALITY_OCTAVES = 7.0
MIN_PATCH = 3
# A log-prior this low shuts a reference out of a pixel. Finite, so that a pixel every reference is shut
# out of still has a defined softmax instead of NaN; far below any logit gap a patch distance can make.
EXCLUDED = -1e4


class Cancelled(Exception):
    """Raised inside a long computation when its cancel check says stop."""


@dataclass(frozen=True)
class Estimate:
    """A clean-image estimate with each reference's share of it, per pixel (when asked for) and overall."""

    x0: torch.Tensor  # C×H×W
    ref_weights: torch.Tensor | None  # N×H×W, sums to 1 over N; None when not computed
    shares: torch.Tensor  # N: ref_weights averaged over the pixels


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


# --- patches --------------------------------------------------------------------------------------------


def pad_image(x: torch.Tensor, pad: int, circular: bool) -> torch.Tensor:
    """Pad a C×H×W (or N×C×H×W) image by `pad` on each side: zeros, or wrapped when tiling."""
    if pad == 0:
        return x
    if not circular:
        return F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    # Index arithmetic wraps any number of times, for patches wider than the image.
    ys = torch.arange(-pad, h + pad, device=x.device) % h
    xs = torch.arange(-pad, w + pad, device=x.device) % w
    return x[..., ys, :][..., xs]


def band_patches(padded: torch.Tensor, k: int, y0: int, y1: int, dilation: int = 1) -> torch.Tensor:
    """Patches centred on rows y0..y1 of an image padded by dilation·(k−1)/2: (rows·W) × (C·k²)."""
    span = dilation * (k - 1)
    band = padded[None, :, y0 : y1 + span, :]
    cols = F.unfold(band, kernel_size=k, dilation=dilation)  # 1 × (C·k²) × (rows·W)
    return cols[0].T


# --- attention ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyBlock:
    """A run of keys (M×d) with their norms ‖key‖² (M) in the same space, values (M×C) and reference(s).

    `owner` is the one reference all keys come from, or each key's reference (M, long). `log_count` is
    the log of how many key positions each key stands for when keys are sampled (0 for every key).
    """

    keys: torch.Tensor
    norms: torch.Tensor
    values: torch.Tensor
    owner: int | torch.Tensor
    log_count: torch.Tensor | float = 0.0


def exact_blocks(
    refs: torch.Tensor, a: float, k: int, circular: bool, rows: int, key_mask: torch.Tensor | None = None
) -> Iterator[KeyBlock]:
    """Every key position of every reference, one band of `rows` rows of one reference at a time.

    `key_mask` (N×H×W bool) shuts out the positions where it is False.
    """
    n, c, h, w = refs.shape
    padded = pad_image(refs, (k - 1) // 2, circular)
    for i in range(n):
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            keys = band_patches(padded[i], k, y0, y1) * a
            values = refs[i, :, y0:y1].reshape(c, -1).T
            if key_mask is None or bool(key_mask[i].all()):
                yield KeyBlock(keys, (keys * keys).sum(1), values, i)
                continue
            allowed = key_mask[i, y0:y1].reshape(-1)
            if bool(allowed.any()):
                log_count = torch.zeros(allowed.shape, dtype=refs.dtype, device=refs.device)
                yield KeyBlock(
                    keys, (keys * keys).sum(1), values, i, log_count.masked_fill_(~allowed, EXCLUDED)
                )


def patch_attention(
    x_t: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    b: float,
    k: int,
    circular: bool,
    log_prior: torch.Tensor,
    *,
    blocks: list[KeyBlock] | None = None,
    features: torch.Tensor | None = None,
    pixel_weights: bool = True,
    low_precision: bool = False,
    key_mask: torch.Tensor | None = None,
    logit_budget: int = 1 << 22,
    key_rows: int = 32,
    rows: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Estimate:
    """Chunked ELS estimate: a streaming log-sum-exp over key blocks, a band of query rows at a time.

    Memory is bounded by `logit_budget` logits whatever the image and reference sizes. Without `blocks`
    every key of every reference takes part (the exact path). `features` (d×H×W) replaces each query's
    k×k patch by the same reduced coordinates the blocks' keys use (the fast path). `pixel_weights`
    False skips the per-pixel reference weights (only the overall shares), which needs a single block.
    `low_precision` does the query·key products in fp16 (for GPUs; bf16 is too coarse at low noise),
    the rest in fp32. `rows` (start, stop) estimates only those rows, e.g. to check the fast path.
    `log_prior` is per reference (N) or per reference and pixel (N×H×W), always added in fp32.
    `key_mask` (N×H×W bool, exact path only) shuts out the key positions where it is False.
    """
    c, h, w = x_t.shape
    n = refs.shape[0]
    log_prior, pixel_prior = split_prior(log_prior, n)
    padded_q = pad_image(x_t, (k - 1) // 2, circular) if features is None else None
    # Logit = (q·key − ½‖key‖²)·scale + prior: ‖q‖² is the same for every key of a query, so it cancels.
    scale = 1.0 / (b * b)
    # Rows of patches are bounded too: at 512² a row of whole-image-wide patches is ~10⁸ floats.
    patch_rows = max(1, (1 << 24) // (w * c * k * k))
    key_rows = min(key_rows, patch_rows)
    widest = w * key_rows if blocks is None else max(blk.keys.shape[0] for blk in blocks)
    q_rows = max(1, min(patch_rows, logit_budget // (widest * w)))
    first, stop = rows if rows is not None else (0, h)
    if not pixel_weights and (blocks is None or len(blocks) != 1):
        raise ValueError("shares without per-pixel weights need exactly one key block")
    x0 = torch.empty(c, (stop - first) * w, dtype=x_t.dtype, device=x_t.device)
    ref_weights = torch.empty(n, (stop - first) * w, dtype=x_t.dtype, device=x_t.device)
    shares = torch.zeros(n, dtype=x_t.dtype, device=x_t.device)
    for y0 in range(first, stop, q_rows):
        if should_stop is not None and should_stop():
            raise Cancelled
        if features is None:
            queries = band_patches(padded_q, k, y0, min(stop, y0 + q_rows))
        else:
            queries = features[:, y0 : min(stop, y0 + q_rows)].reshape(features.shape[0], -1).T
        centre = None
        if low_precision:
            # Distances do not change when queries and keys move together, and centred vectors have
            # small dot products, so fp16 rounds them far less.
            centre = queries.mean(0)
            queries = queries - centre
        nq = queries.shape[0]
        pp = None  # this band's per-pixel prior, nq×N
        if pixel_prior is not None:
            pp = pixel_prior[:, y0 : min(stop, y0 + q_rows)].reshape(n, -1).T.contiguous()
        m = torch.full((nq,), -math.inf, dtype=x_t.dtype, device=x_t.device)
        total = torch.zeros(nq, dtype=x_t.dtype, device=x_t.device)
        mixed = torch.zeros(nq, c, dtype=x_t.dtype, device=x_t.device)
        per_ref = torch.zeros(nq, n, dtype=x_t.dtype, device=x_t.device)
        for blk in blocks if blocks is not None else exact_blocks(refs, a, k, circular, key_rows, key_mask):
            if should_stop is not None and should_stop():  # the exact path can spend minutes per band
                raise Cancelled
            if centre is None:
                bias = blk.norms * (-0.5 * scale) + (log_prior[blk.owner] + blk.log_count)
                if pp is not None and not isinstance(blk.owner, int):
                    # The per-pixel prior rides in the product: a one-hot column per reference on the
                    # keys picks each query's prior for the key's reference, with no extra pass.
                    keys = torch.cat([blk.keys * scale, F.one_hot(blk.owner, n).to(blk.keys.dtype)], 1)
                    logits = torch.addmm(bias[None], torch.cat([queries, pp], 1), keys.T)
                else:
                    logits = torch.addmm(bias[None], queries, (blk.keys * scale).T)
                    if pp is not None:
                        logits.add_(pp[:, blk.owner, None])
            else:
                logits = _low_precision_logits(queries, blk, centre, scale, log_prior)
                if pp is not None:
                    logits.add_(
                        pp[:, blk.owner] if not isinstance(blk.owner, int) else pp[:, blk.owner, None]
                    )
            new_m = torch.maximum(m, logits.amax(dim=1))
            # In place, the logits become the weights p. Clamped so far-off keys give exp(−80), not
            # denormals (20× slower on x86, and no more exact).
            p = logits.sub_(new_m[:, None]).clamp_(min=-80.0).exp_()
            keep = torch.exp(m - new_m)[:, None]  # exp(−inf) = 0 on the first block
            # One pass over p gives both the weighted values and the weight sum (a ones column).
            summed = p @ torch.cat([blk.values, torch.ones_like(blk.values[:, :1])], 1)
            m, mixed, total = new_m, mixed * keep + summed[:, :c], total * keep[:, 0] + summed[:, c]
            if isinstance(blk.owner, int):
                per_ref *= keep
                per_ref[:, blk.owner] += summed[:, c]
            elif pixel_weights:
                per_ref = per_ref * keep + p @ F.one_hot(blk.owner, n).to(p.dtype)
            else:
                shares.index_add_(0, blk.owner, (1.0 / total) @ p)
        done = slice((y0 - first) * w, (min(stop, y0 + q_rows) - first) * w)
        x0[:, done] = (mixed / total[:, None]).T
        if pixel_weights:
            weights = per_ref / total[:, None]
            ref_weights[:, done] = weights.T
            shares += weights.sum(0)
    shares /= (stop - first) * w
    out = ref_weights.reshape(n, stop - first, w) if pixel_weights else None
    return Estimate(x0.reshape(c, stop - first, w), out, shares)


def split_prior(log_prior: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A log-prior of shape N or N×H×W as (per reference, per pixel or None)."""
    if log_prior.dim() == 1:
        return log_prior, None
    if log_prior.dim() != 3 or log_prior.shape[0] != n:
        raise ValueError(f"a log-prior is N or N×H×W with N = {n}, not {tuple(log_prior.shape)}")
    return torch.zeros(n, dtype=log_prior.dtype, device=log_prior.device), log_prior


def _low_precision_logits(
    queries: torch.Tensor, blk: KeyBlock, centre: torch.Tensor, scale: float, log_prior: torch.Tensor
) -> torch.Tensor:
    """Logits from centred queries with the products in fp16 where its rounding stays under ~1 logit.

    At the lowest noise levels 1/b² magnifies fp16's rounding of q·k past that, so those steps stay fp32.
    """
    keys = blk.keys - centre
    norms = blk.norms - 2 * (blk.keys @ centre) + centre @ centre  # ‖key − centre‖², exactly
    bias = norms * (-0.5 * scale) + (log_prior[blk.owner] + blk.log_count)
    worst = float(queries.norm(dim=1).max() * keys.norm(dim=1).max()) * scale * 2.0**-11
    if worst > 1.0:
        return torch.addmm(bias[None], queries, keys.T * scale)
    return (queries.half() @ keys.half().T).float().mul_(scale).add_(bias)


def local_score(
    x_t: torch.Tensor, refs: torch.Tensor, a: float, b: float, k: int, circular: bool, log_prior: torch.Tensor
) -> Estimate:
    """The LS variant: each pixel compares only with the same position q = p of every reference."""
    pad = (k - 1) // 2
    diff = (x_t[None] - a * refs).pow(2).sum(1, keepdim=True)  # N×1×H×W
    dist = F.avg_pool2d(pad_image(diff, pad, circular), k, stride=1)[:, 0] * (k * k)
    logits = -dist / (2 * b * b) + (log_prior if log_prior.dim() == 3 else log_prior[:, None, None])
    weights = torch.softmax(logits, dim=0)
    return Estimate(torch.einsum("nhw,nchw->chw", weights, refs), weights, weights.mean((1, 2)))


def whole_image(
    x_t: torch.Tensor, refs: torch.Tensor, a: float, b: float, circular: bool, log_prior: torch.Tensor
) -> Estimate:
    """The ideal denoiser (patch = whole image): reproduces a reference as the noise goes to zero.

    Without tiling every reference is compared aligned. With tiling the whole-image patch wraps, so every
    circular shift of every reference is a key; FFTs give all shifts' distances and the mix at once.
    A per-pixel prior counts as its mean over the image: the patch is the whole image.
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


def cosine_basis(k: int, f: int) -> torch.Tensor:
    """The f lowest orthonormal DCT-II vectors over k taps (f×k)."""
    n = torch.arange(k, dtype=torch.float64)
    rows = [torch.cos(math.pi * (n + 0.5) * j / k) * math.sqrt((1 if j == 0 else 2) / k) for j in range(f)]
    return torch.stack(rows).float()


def cosine_features(x: torch.Tensor, k: int, f: int, circular: bool) -> torch.Tensor:
    """Each pixel's k×k patch on its f×f lowest cosine frequencies per channel: B×(C·f²)×H×W.

    Separable, so it costs O(k·f) per pixel instead of O(k²·f²); padded like the patches.
    """
    bsz, c, h, w = x.shape
    basis = cosine_basis(k, f).to(x)
    padded = pad_image(x, (k - 1) // 2, circular)
    rows = F.conv2d(padded, basis.repeat(c, 1)[:, None, None, :], groups=c)  # B×(C·f)×(H+k−1)×W
    return F.conv2d(rows, basis.repeat(c * f, 1)[:, None, :, None], groups=c * f)


# Orthonormal luminance / opponent-colour axes: distances are unchanged, but texture lives mostly in
# luminance, so it can keep more frequencies than the two colour axes for the same number of dims.
OPPONENT = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
        [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
    ]
)


def to_opponent(x: torch.Tensor) -> torch.Tensor:
    """RGB → (luminance, red–green, yellow–blue) on the channel axis of a B×3×H×W batch (a rotation)."""
    return torch.einsum("dc,bchw->bdhw", OPPONENT.to(x), x)


def subset_features(
    refs: torch.Tensor,
    k: int,
    f: int,
    circular: bool,
    owner: torch.Tensor,
    index: torch.Tensor,
    budget: int = 1 << 24,
) -> torch.Tensor:
    """cosine_features at chosen keys only (reference `owner`, flat position `index`): M×d.

    Gathers the k×k patches at most `budget` floats at a time, since computing the features at every
    position would cost as much as the whole step.
    """
    _, c, _, w = refs.shape
    basis = cosine_basis(k, f).to(refs)
    # Channels last, so each gathered patch row is one contiguous run of memory.
    padded = pad_image(refs, (k - 1) // 2, circular).permute(0, 2, 3, 1).contiguous()
    span = torch.arange(k, device=refs.device)
    step = max(1, budget // (c * k * k))
    feats = []
    for start in range(0, index.numel(), step):
        idx, own = index[start : start + step], owner[start : start + step]
        yy = (idx // w)[:, None, None] + span[None, :, None]
        xx = (idx % w)[:, None, None] + span[None, None, :]
        patches = padded[own[:, None, None], yy, xx]  # M×k×k×C
        along_x = torch.einsum("myxc,fx->mcyf", patches, basis)
        # Same order as cosine_features: channel, x frequency, y frequency.
        coef = torch.einsum("mcyf,ey->mcfe", along_x, basis)
        feats.append(coef.reshape(coef.shape[0], -1))
    return torch.cat(feats)


def key_counts(shares: torch.Tensor, total: int, positions: int | list[int]) -> list[int]:
    """Split a key budget among references by their share of the image, each keeping a small floor.

    References the image no longer draws from still get a few keys, so they can come back. `positions`
    caps each reference's count: one number for all, or one per reference.
    """
    n = shares.numel()
    caps = positions if isinstance(positions, list) else [positions] * n
    floor = max(1, total // (2 * n))
    spare = max(0, total - floor * n)
    share = shares.double().clamp(min=0)
    share = share / share.sum() if float(share.sum()) > 0 else torch.full_like(share, 1.0 / n)
    return [min(cap, floor + int(spare * float(x))) for cap, x in zip(caps, share, strict=True)]


def kept_freqs(k: int) -> tuple[int, int]:
    """How many of a k×k patch's lowest cosine frequencies per axis the fast path keeps: luminance, chroma.

    About half the patch side, 8 to 32, and a third of that for each colour axis. With fewer, similar
    patches at mid noise differ too little in the kept dims, so the estimate blends several where the exact
    path picks one (bench/bench_patch.py at 128²: 8 and 3 everywhere, 0.14 mean error against the exact
    path; this, 0.047 for 1.5× the time; 16 and 6 at t = 0.25–0.55 were as close as full patches). Small
    patches at low noise stay at 8: more changed nothing there, and those steps have the most keys, so
    dims cost the most.
    """
    luma = min(32, max(8, k // 2))
    return luma, max(3, luma // 3)


def fast_patch_attention(
    x_t: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    b: float,
    k: int,
    circular: bool,
    log_prior: torch.Tensor,
    generator: torch.Generator,
    *,
    shares: torch.Tensor | None = None,
    max_keys: int = 8192,
    max_gather: int = 1 << 23,
    freqs: int | None = None,
    chroma_freqs: int | None = None,
    pixel_weights: bool = True,
    low_precision: bool = False,
    key_mask: torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Estimate:
    """The fast ELS estimate: a random subset of key positions, patches reduced to low frequencies.

    - A budget of max_keys random key positions (fewer for wide patches, so gathering them stays under
      `max_gather` floats) is split among the references by `shares`, their share of the image at the
      previous step (coarse to fine: late steps spend their keys on the few references in use). The
      positions are drawn afresh each step, so a run sees every part of every reference.
    - Patches are compared on their `freqs`×`freqs` lowest cosine frequencies of luminance and
      `chroma_freqs`² of each opponent-colour axis (where most of a texture patch's energy is; by default
      `kept_freqs(k)`, more for wider patches), norms included: keeping a key's full norm but dropping its
      high-frequency cross term with the query would penalise textured references, and the image
      would collapse onto the smoothest one.
    Queries stay at every pixel and the keys do not depend on where things are in the image, so the
    estimate is still translation-equivariant. `key_mask` (N×H×W bool) limits each reference's keys to
    the positions where it is True.
    """
    n, c, h, w = refs.shape
    default_f, default_fc = kept_freqs(k)
    f = min(k, default_f if freqs is None else freqs)
    fc = min(k, default_fc if chroma_freqs is None else chroma_freqs)
    opp_refs, opp_x = to_opponent(refs), to_opponent(x_t[None])
    total = max(n, min(max_keys, max_gather // (c * k * k)))
    allowed = None if key_mask is None else [m.flatten().nonzero()[:, 0].cpu() for m in key_mask]
    positions = [h * w] * n if allowed is None else [len(a) for a in allowed]
    counts = key_counts(torch.ones(n) if shares is None else shares.cpu(), total, positions)
    picks = [
        torch.randperm(p, generator=generator)[:count] for p, count in zip(positions, counts, strict=True)
    ]
    if allowed is not None:
        picks = [a[pick] for a, pick in zip(allowed, picks, strict=True)]
    index = torch.cat(picks).to(x_t.device)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor(counts)).to(x_t.device)
    keys = torch.cat(
        [
            subset_features(opp_refs[:, :1], k, f, circular, owner, index),
            subset_features(opp_refs[:, 1:], k, fc, circular, owner, index),
        ],
        dim=1,
    )
    norms = keys.pow(2).sum(1)
    values = refs.flatten(2)[owner, :, index]
    # Each sampled key stands for hw / count positions of its reference: without this importance weight
    # a reference given more keys would gain weight just for that, and its share would snowball.
    stands_for = torch.log(
        torch.tensor(positions, dtype=refs.dtype) / torch.tensor(counts, dtype=refs.dtype).clamp(min=1)
    ).to(x_t.device)
    block = KeyBlock(keys * a, norms * (a * a), values, owner, stands_for[owner])
    return patch_attention(
        x_t,
        refs,
        a,
        b,
        k,
        circular,
        log_prior,
        blocks=[block],
        features=torch.cat(
            [cosine_features(opp_x[:, :1], k, f, circular), cosine_features(opp_x[:, 1:], k, fc, circular)], 1
        )[0],
        pixel_weights=pixel_weights,
        low_precision=low_precision,
        should_stop=should_stop,
    )
