"""The ELS machine's attention: which keys each pixel may match (the border rule) and the softmax over them.

Kamb & Ganguli (2025), as in their `LocalEquivBordersScoreModule`: a pixel whose k×k patch lies wholly
inside the image matches every reference patch that lies wholly inside its reference; a pixel within k//2
of an edge matches only reference patches at the same distance from that edge (zero-padded like the
query), along the other axis still every position wholly inside. Near a corner that leaves one key per
reference, the one at the same position. So an image's frame is made of references' frames, and its
interior of their interiors: no patch half in the padding competes with whole patches.

With tiling the image has no edges. References that tile themselves give every circular position as a
key ("wrap"); references that do not give only the patches wholly inside them ("inside"), since a
wrapped key would join two unrelated edges (the authors use unwrapped patches in this case too).

Images are C×H×W tensors in [-1, 1]; references are N×C×H×W; all references share the image's size.
The prior may differ per pixel (an N×H×W log-prior: a sketch's colours choosing materials), and a
reference may offer keys at some positions only (an N×H×W key mask: inpainting's context offers only the
pixels it keeps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from backend.priors import EXCLUDED

Borders = Literal["paper", "wrap", "inside"]
BORDERS: tuple[Borders, ...] = ("paper", "wrap", "inside")
# Logits per tile of (keys × queries) processed in one pass: 2**18 floats (1 MiB) stay in a core's L2
# cache, so the max, exp and sums over a tile cost little next to its matrix product.
TILE = 1 << 18
# Below exp(−80) a weight is nothing next to the largest (1), and clamping keeps exp off denormals,
# which are some 50× slower on x86.
FLOOR = -80.0


class Cancelled(Exception):
    """Raised inside a long computation when its cancel check says stop."""


@dataclass(frozen=True)
class Estimate:
    """A clean-image estimate with each reference's share of it, per pixel (when asked for) and overall."""

    x0: torch.Tensor  # C×H×W
    ref_weights: torch.Tensor | None  # N×H×W, sums to 1 over N; None when not computed
    shares: torch.Tensor  # N: ref_weights averaged over the pixels


def borders_for(tiling: bool, references_tile: bool) -> Borders:
    """The key rule for a run: the paper's borders, or with tiling wrapped keys only when references tile."""
    if not tiling:
        return "paper"
    return "wrap" if references_tile else "inside"


def tiles(image: torch.Tensor, tolerance: float = 2.0) -> bool:
    """Whether an image (C×H×W) tiles: the jumps across its wrap seams are no larger than inside it.

    Compares the mean step between the last and first row (and column) with the mean step between
    neighbouring rows (columns) elsewhere; a photograph's seams jump several times more.
    """
    checks = []
    for dim in (-2, -1):
        inside = image.diff(dim=dim).abs().mean()
        seam = (image.select(dim, 0) - image.select(dim, -1)).abs().mean()
        checks.append(float(seam) <= tolerance * float(inside) + 1e-3)
    return all(checks)


def split_prior(log_prior: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A log-prior of shape N or N×H×W as (per reference, per pixel or None)."""
    if log_prior.dim() == 1:
        return log_prior, None
    if log_prior.dim() != 3 or log_prior.shape[0] != n:
        raise ValueError(f"a log-prior is N or N×H×W with N = {n}, not {tuple(log_prior.shape)}")
    return torch.zeros(n, dtype=log_prior.dtype, device=log_prior.device), log_prior


def pixel_slice(prior: torch.Tensor | None, ys: range, xs: range) -> torch.Tensor | None:
    """A per-pixel prior's values at ys×xs as N × (rows·cols), queries in the order patches come."""
    if prior is None:
        return None
    return prior[:, ys.start : ys.stop, xs.start : xs.stop].reshape(prior.shape[0], -1)


# --- the border rule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """Query pixels ys×xs whose keys lie at rows key_ys and columns key_xs of every reference.

    None on an axis means each query's own row (column): the rule for pixels near an edge.
    """

    ys: range
    xs: range
    key_ys: range | None
    key_xs: range | None


def inside_range(length: int, k: int) -> range:
    """Centres on one axis whose k-wide patch lies wholly inside a side of `length` pixels."""
    return range(k // 2, max(k // 2, length - k // 2))


def regions(h: int, w: int, k: int, borders: Borders) -> list[Region]:
    """Split an h×w image into regions that share one key rule (see the module docstring)."""
    inside_y, inside_x = inside_range(h, k), inside_range(w, k)
    if borders == "wrap":
        return [Region(range(h), range(w), range(h), range(w))]
    if borders == "inside":
        if not inside_y or not inside_x:
            raise ValueError(f"a {k}×{k} patch does not fit inside a {w}×{h} reference")
        return [Region(range(h), range(w), inside_y, inside_x)]

    def split(length: int, inner: range) -> list[tuple[range, bool]]:
        top = range(0, min(inner.start, length))
        bottom = range(max(top.stop, inner.stop), length)
        parts = [(top, True), (inner, False), (bottom, True)]
        return [(part, near_edge) for part, near_edge in parts if len(part)]

    out = []
    for ys, near_y in split(h, inside_y):
        for xs, near_x in split(w, inside_x):
            out.append(Region(ys, xs, None if near_y else inside_y, None if near_x else inside_x))
    return out


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


def rect_patches(padded: torch.Tensor, k: int, ys: range, xs: range) -> torch.Tensor:
    """Patches centred on ys×xs of an image padded by (k−1)/2, one per column: (C·k²) × (rows·cols)."""
    band = padded[:, ys.start : ys.stop + k - 1, xs.start : xs.stop + k - 1]
    return F.unfold(band[None], kernel_size=k)[0]


# --- attention ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyBlock:
    """A run of keys (M×d) with their norms ‖key‖² (M) in the same space, values (M×C) and reference(s).

    `owner` is the one reference all keys come from, or each key's reference (M, long). `log_count` is
    the log of how many key positions each key stands for when keys are sampled (0 for every key).
    Keys, norms, values and log_count may carry a leading T: the keys of each of `attend`'s T tiles of
    queries (the rows of an edge band, each with its own keys), sharing `owner`.
    """

    keys: torch.Tensor
    norms: torch.Tensor
    values: torch.Tensor
    owner: int | torch.Tensor
    log_count: torch.Tensor | float = 0.0


def attend(
    queries: torch.Tensor,
    blocks: Iterable[KeyBlock],
    scale: float,
    log_prior: torch.Tensor,
    *,
    pixel_prior: torch.Tensor | None = None,
    pixel_weights: bool = True,
    low_precision: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Softmax attention of queries (d×Q, one per column; or T×d×n, T tiles of n) over key blocks.

    The logit of a key is −‖q − key‖²·scale/2 + prior + log_count, where the prior is `log_prior` of
    the key's reference plus, when given, `pixel_prior` (N×Q) of that reference at the query.

    Returns the mixed values (C×Q), each reference's weight per query (N×Q, None unless `pixel_weights`)
    and the weights summed over the queries (N). A streaming log-sum-exp over the blocks; each block is
    taken in tiles of at most TILE logits (keys × queries, so per-reference sums are row index_adds),
    and each tile goes through its max, exp and sums while it is in cache. Without `pixel_weights` the
    blocks must be a single one. `low_precision` does the products in bfloat16 where the rounding stays
    well under one logit (see `low_precision_ok`).
    """
    tiles = queries[None] if queries.dim() == 2 else queries
    width = tiles.shape[2]
    nq = tiles.shape[0] * width
    n = log_prior.shape[0]
    dtype, device = queries.dtype, queries.device
    m = torch.full((nq,), -math.inf, dtype=dtype, device=device)
    summed_all: torch.Tensor | None = None  # (C+1) × Q: the weighted values, then the weights' sum
    per_ref = torch.zeros(n, nq, dtype=dtype, device=device) if pixel_weights else None
    shares = torch.zeros(n, dtype=dtype, device=device)
    centre = tiles.mean((0, 2)) if low_precision else None
    if centre is not None:
        tiles = tiles - centre[:, None]
    for seen, blk in enumerate(blocks, start=1):
        if not pixel_weights and seen > 1:
            raise ValueError("shares without per-pixel weights need exactly one key block")
        if should_stop is not None and should_stop():  # the exact path can spend minutes per region
            raise Cancelled
        keys, bias = _scaled_keys(blk, scale, log_prior, centre)
        per_tile = keys.dim() == 3  # each tile its own keys (see KeyBlock)
        if per_tile and keys.shape[0] != tiles.shape[0]:
            raise ValueError(f"{keys.shape[0]} sets of keys for {tiles.shape[0]} tiles of queries")
        m_keys, c = keys.shape[-2], blk.values.shape[-1]
        if summed_all is None:
            summed_all = torch.zeros(c + 1, nq, dtype=dtype, device=device)
        # The values with a ones row: one product gives both the weighted values and the weight sum.
        ones = blk.values.new_ones(*blk.values.shape[:-2], 1, m_keys)
        values = torch.cat([blk.values.transpose(-1, -2), ones], -2)
        owner = blk.owner
        half = low_precision and low_precision_ok(tiles, keys)
        keys_used = keys.to(torch.bfloat16) if half else keys
        step = max(1, TILE // m_keys)
        key_weight = None if per_ref is not None else torch.zeros(m_keys, dtype=dtype, device=device)
        for tile, start in ((t, s) for t in range(tiles.shape[0]) for s in range(0, width, step)):
            stop = min(width, start + step)
            q0, q1 = tile * width + start, tile * width + stop
            qt = tiles[tile, :, start:stop]
            k_t, b_t, v_t = (
                (keys_used[tile], bias[tile], values[tile]) if per_tile else (keys_used, bias, values)
            )
            if half:
                logits = (k_t @ qt.to(torch.bfloat16)).float().add_(b_t[:, None])
            else:
                logits = torch.addmm(b_t[:, None], k_t, qt)
            if pixel_prior is not None:  # a row per key (or one row for a single-reference block)
                logits += pixel_prior[owner, q0:q1]
            # The first block has nothing to rescale (the fast path's only one): fewer small ops a tile.
            new_m = logits.amax(0) if seen == 1 else torch.maximum(m[q0:q1], logits.amax(0))
            p = logits.sub_(new_m).clamp_(min=FLOOR).exp_()  # in place: the logits become the weights
            summed = v_t @ p
            if seen == 1:
                m[q0:q1], summed_all[:, q0:q1] = new_m, summed
            else:
                keep = torch.exp(m[q0:q1] - new_m)
                m[q0:q1] = new_m
                summed_all[:, q0:q1] = summed_all[:, q0:q1] * keep + summed
                if per_ref is not None:
                    per_ref[:, q0:q1] *= keep
            if per_ref is not None:
                if isinstance(owner, int):
                    per_ref[owner, q0:q1] += summed[c]
                else:
                    per_ref[:, q0:q1].index_add_(0, owner, p)
            elif key_weight is not None:
                # A single block: the sums are final, so each key's weight summed over the queries.
                key_weight.addmv_(p, summed[c].reciprocal())
        if key_weight is not None:
            if isinstance(owner, int):
                shares[owner] += key_weight.sum()
            else:
                shares.index_add_(0, owner, key_weight)
    if summed_all is None:
        raise ValueError("attention needs at least one key block")
    mixed, total = summed_all[:-1], summed_all[-1]
    if per_ref is not None:
        per_ref /= total
        shares = per_ref.sum(1)
    return mixed / total, per_ref, shares


def _scaled_keys(
    blk: KeyBlock, scale: float, log_prior: torch.Tensor, centre: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys times the scale, and each key's bias: −‖key‖²·scale/2 + prior + log_count.

    ‖q‖² is the same for every key of a query, so it cancels in the softmax. Distances do not change
    when queries and keys move together: with a centre c both arrive as q − c and k − c, whose small
    products round far less in low precision.
    """
    keys, norms = blk.keys, blk.norms
    if centre is not None:
        norms = norms - 2 * (keys @ centre) + centre @ centre  # ‖k − c‖², exactly
        keys = keys - centre
    bias = norms * (-0.5 * scale) + (log_prior[blk.owner] + blk.log_count)
    return keys * scale, bias


def low_precision_ok(tiles: torch.Tensor, keys: torch.Tensor) -> bool:
    """Whether bfloat16 products keep every logit within ~0.5 of fp32 (scaled keys; T×d×n queries).

    bfloat16 keeps 8 bits: each product's rounding is at most about |q|·|k|·2⁻⁸ (inputs) plus the
    output's 2⁻⁹ relative. At low noise the scale 1/b² magnifies that past a logit, so those stay fp32.
    """
    worst = float(tiles.norm(dim=1).max() * keys.norm(dim=-1).max())
    return worst * 2.0**-8 < 0.5


# --- the exact path -------------------------------------------------------------------------------------


def patch_attention(
    x_t: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    b: float,
    k: int,
    borders: Borders,
    log_prior: torch.Tensor,
    *,
    pixel_weights: bool = True,
    low_precision: bool = False,
    key_mask: torch.Tensor | None = None,
    logit_budget: int = 1 << 22,
    key_rows: int = 32,
    rows: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Estimate:
    """The exact ELS estimate: every allowed key of every reference, region by region (see `regions`).

    Memory stays bounded by `logit_budget` logits per band of queries whatever the sizes. `rows`
    (start, stop) estimates only those rows, e.g. to check the fast path. Pixels near two edges (the
    corners) have one key per reference, the local score. `log_prior` is per reference (N) or per
    reference and pixel (N×H×W); `key_mask` (N×H×W bool) shuts out the key positions where it is False.
    """
    c, h, w = x_t.shape
    n = refs.shape[0]
    global_prior, pixel_prior = split_prior(log_prior, n)
    first, stop = rows if rows is not None else (0, h)
    pad = (k - 1) // 2
    circular = borders != "paper"
    padded_x = pad_image(x_t, pad, circular)
    padded_refs = pad_image(refs, pad, borders == "wrap")
    x0 = torch.zeros(c, h, w, dtype=x_t.dtype, device=x_t.device)
    weights = torch.zeros(n, h, w, dtype=x_t.dtype, device=x_t.device)
    scale = 1.0 / (b * b)
    corners = []
    for region in regions(h, w, k, borders):
        ys = range(max(region.ys.start, first), min(region.ys.stop, stop))
        if not ys:
            continue
        if region.key_ys is None and region.key_xs is None:
            corners.append(Region(ys, region.xs, None, None))
            continue
        for qy, qx, ky, kx in _rectangles(Region(ys, region.xs, region.key_ys, region.key_xs)):
            budget_rows = max(1, logit_budget // max(1, len(qx) * n * len(ky) * len(kx)))
            for y0 in range(qy.start, qy.stop, budget_rows):
                band = range(y0, min(qy.stop, y0 + budget_rows))
                queries = rect_patches(padded_x, k, band, qx)
                blocks = _exact_blocks(padded_refs, refs, a, k, ky, kx, key_rows, key_mask)
                mix, per_ref, _ = attend(
                    queries, blocks, scale, global_prior, pixel_prior=pixel_slice(pixel_prior, band, qx),
                    low_precision=low_precision, should_stop=should_stop,
                )  # fmt: skip
                x0[:, band.start : band.stop, qx.start : qx.stop] = mix.reshape(c, len(band), len(qx))
                assert per_ref is not None
                weights[:, band.start : band.stop, qx.start : qx.stop] = per_ref.reshape(
                    n, len(band), len(qx)
                )
    for r in corners:
        same = local_score(x_t, refs, a, b, k, False, log_prior, key_mask, window=(r.ys, r.xs))
        window = (slice(None), slice(r.ys.start, r.ys.stop), slice(r.xs.start, r.xs.stop))
        x0[window], weights[window] = same.x0, same.ref_weights  # type: ignore[assignment]
    x0, weights = x0[:, first:stop], weights[:, first:stop]
    return Estimate(x0, weights if pixel_weights else None, weights.mean((1, 2)))


def _rectangles(region: Region) -> Iterator[tuple[range, range, range, range]]:
    """A region as rectangles of queries that all share one rectangle of key positions."""
    if region.key_ys is None:
        for y in region.ys:
            assert region.key_xs is not None
            yield range(y, y + 1), region.xs, range(y, y + 1), region.key_xs
    elif region.key_xs is None:
        for x in region.xs:
            yield region.ys, range(x, x + 1), region.key_ys, range(x, x + 1)
    else:
        yield region.ys, region.xs, region.key_ys, region.key_xs


def _exact_blocks(
    padded_refs: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    k: int,
    ys: range,
    xs: range,
    rows: int,
    key_mask: torch.Tensor | None = None,
) -> Iterator[KeyBlock]:
    """Every key at ys×xs of every reference, `rows` rows of one reference at a time; masked ones shut out."""
    n, c = refs.shape[:2]
    for i in range(n):
        for y0 in range(ys.start, ys.stop, rows):
            band = range(y0, min(ys.stop, y0 + rows))
            window = (slice(band.start, band.stop), slice(xs.start, xs.stop))
            log_count: torch.Tensor | float = 0.0
            if key_mask is not None and not bool(key_mask[i][window].all()):
                allowed = key_mask[i][window].reshape(-1)
                if not bool(allowed.any()):
                    continue
                log_count = torch.zeros(allowed.shape, dtype=refs.dtype, device=refs.device)
                log_count.masked_fill_(~allowed, EXCLUDED)
            keys = rect_patches(padded_refs[i], k, band, xs).T * a
            values = refs[i, :, window[0], window[1]].reshape(c, -1).T
            yield KeyBlock(keys, (keys * keys).sum(1), values, i, log_count)


def box_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sums over every k×k window of the last two axes (valid windows), in O(1) per window.

    Running sums in float64: differences of large partial sums would lose a float32's digits.
    """
    out = x.double()
    for dim in (-2, -1):
        run = F.pad(out.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))
        length = run.shape[dim]
        out = run.narrow(dim, k, length - k) - run.narrow(dim, 0, length - k)
    return out.to(x.dtype)


def local_score(
    x_t: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    b: float,
    k: int,
    circular: bool,
    log_prior: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    window: tuple[range, range] | None = None,
) -> Estimate:
    """Each pixel against the patch at its own position in every reference, padded like the image.

    The LS machine of the paper, and the border rule's answer for pixels near two edges (corners).
    `log_prior` is N or N×H×W; `key_mask` (N×H×W bool) shuts a reference out where it is False.
    `window` (ys, xs) estimates only those pixels (C×rows×cols): the corners of a big image need only
    their own neighbourhood, not N float64 copies of the whole image.
    """
    h, w = x_t.shape[-2:]
    ys, xs = window if window is not None else (range(h), range(w))
    dist = box_sum(_window_distances(x_t, refs, a, ys, xs, (k - 1) // 2, circular), k)  # N×rows×cols
    prior = (
        log_prior[:, None, None]
        if log_prior.dim() == 1
        else log_prior[:, ys.start : ys.stop, xs.start : xs.stop]
    )
    logits = -dist / (2 * b * b) + prior
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, ys.start : ys.stop, xs.start : xs.stop], EXCLUDED)
    weights = torch.softmax(logits, dim=0)
    values = refs[:, :, ys.start : ys.stop, xs.start : xs.stop]
    return Estimate(torch.einsum("nhw,nchw->chw", weights, values), weights, weights.mean((1, 2)))


def _window_distances(
    x: torch.Tensor, refs: torch.Tensor, a: float, ys: range, xs: range, pad: int, circular: bool
) -> torch.Tensor:
    """‖x − a·ref‖² per pixel (N × rows × cols) over rows ys and columns xs widened by `pad` on each side,
    padded like the image: zeros past an edge (both sides are zero there), or wrapped when circular."""
    h, w = x.shape[-2:]
    if circular:
        rows = torch.arange(ys.start - pad, ys.stop + pad, device=x.device) % h
        cols = torch.arange(xs.start - pad, xs.stop + pad, device=x.device) % w
        return (x[None] - a * refs).pow(2).sum(1)[:, rows][:, :, cols]
    y0, y1 = max(0, ys.start - pad), min(h, ys.stop + pad)
    x0, x1 = max(0, xs.start - pad), min(w, xs.stop + pad)
    inside = (x[None, :, y0:y1, x0:x1] - a * refs[:, :, y0:y1, x0:x1]).pow(2).sum(1)
    return F.pad(inside, (x0 - xs.start + pad, xs.stop + pad - x1, y0 - ys.start + pad, ys.stop + pad - y1))
