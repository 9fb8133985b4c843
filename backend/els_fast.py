"""The fast ELS estimate, an approximation of the exact one: sampled keys, compared on low frequencies.

`els_attention.patch_attention` compares every pixel's k×k patch with every allowed reference patch: at
256² with 32 references that is hours on a CPU. This estimate keeps the same border rule and softmax but
- takes a random subset of the allowed key positions, split among the references by their share of the
  image at the previous step (late steps spend their keys on the few references in use), each key
  weighted by how many positions it stands for, so a reference given more keys gains no weight for that;
  the positions are drawn afresh each step, so a run sees every part of every reference;
- compares patches on their f×f lowest cosine frequencies of luminance and fc×fc of each opponent-colour
  axis (where most of a texture patch's energy lies), norms included: keeping a key's full norm but
  dropping its high-frequency cross term with the query would penalise textured references.
Queries stay at every pixel and keys do not depend on where things are in the image, so the estimate is
still translation-equivariant. bench/bench_patch.py measures its error against the exact path and
tests/test_patch_fast.py bounds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.els_attention import (
    EXCLUDED,
    Borders,
    Estimate,
    KeyBlock,
    Region,
    attend,
    local_score,
    pad_image,
    pixel_slice,
    regions,
    split_prior,
)

# Orthonormal luminance / opponent-colour axes: distances are unchanged, but texture lives mostly in
# luminance, so it can keep more frequencies than the two colour axes for the same number of dims.
OPPONENT = torch.tensor(
    [
        [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
        [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
    ]
)
# Floats of intermediate features held at once (16 MiB).
CHUNK = 1 << 22
# Logits per step the default key budget aims at (`key_budget`): 8192 keys for a 128² image.
LOGITS_PER_STEP = 1 << 27
FEWEST_KEYS = 2048
# Principal axes kept at high noise (a ≤ b), where patches are widest (see fast_patch_attention).
HIGH_NOISE_DIMS = 128
# An edge row's keys, as a share of the interior's budget. They lie on the row's own line, a pool about
# W times smaller than the interior's, so half the keys still sample it far more densely, and each row's
# keys need a feature pass of their own (the costliest part of a 256² step). With half, an edge pixel's
# error against many keys stays under an interior pixel's at every full-size step of a 128² and a 256²
# run (bench/bench_edge_keys.py, bench/RESULTS.md).
EDGE_KEYS = 0.5


def to_opponent(x: torch.Tensor) -> torch.Tensor:
    """RGB → (luminance, red–green, yellow–blue) on the channel axis of a B×3×H×W batch (a rotation)."""
    return torch.einsum("dc,bchw->bdhw", OPPONENT.to(x), x)


def opponent_padded(refs: torch.Tensor, pad: int, circular: bool) -> torch.Tensor:
    """References (N×3×H×W) in opponent colours, channels last and padded by `pad` like the image.

    One product straight into channels-last, copied into a zeroed frame: the einsum, pad and permute
    it replaces cost 2.8× as much at 256² (32 references), every step.
    """
    n, c, h, w = refs.shape
    turned = refs.permute(0, 2, 3, 1) @ OPPONENT.T.to(refs)  # N×H×W×3
    if pad == 0:
        return turned
    if circular:
        ys = torch.arange(-pad, h + pad, device=refs.device) % h
        xs = torch.arange(-pad, w + pad, device=refs.device) % w
        return turned[:, ys][:, :, xs]
    out = refs.new_zeros(n, h + 2 * pad, w + 2 * pad, c)
    out[:, pad : pad + h, pad : pad + w] = turned
    return out


def cosine_basis(k: int, f: int) -> torch.Tensor:
    """The f lowest orthonormal DCT-II vectors over k taps (f×k)."""
    n = torch.arange(k, dtype=torch.float64)
    rows = [torch.cos(math.pi * (n + 0.5) * j / k) * math.sqrt((1 if j == 0 else 2) / k) for j in range(f)]
    return torch.stack(rows).float()


def kept_freqs(k: int) -> tuple[int, int]:
    """How many of a k×k patch's lowest cosine frequencies per axis the fast path keeps: luminance, chroma.

    About half the patch side, 8 to 32, and a third of that for each colour axis. With fewer, similar
    patches at mid noise differ too little in the kept dims, so the estimate blends several where the exact
    path picks one (bench/bench_patch.py at 128²: 8 and 3 everywhere, 0.14 mean error against the exact
    path; this, 0.047 for 1.5× the time). Small patches at low noise stay at 8.
    """
    luma = min(32, max(8, k // 2))
    return luma, max(3, luma // 3)


@dataclass(frozen=True)
class FeatureSpace:
    """How a k×k opponent-colour patch becomes a short vector: its f×f and fc×fc lowest frequencies."""

    k: int
    f: int  # luminance frequencies per axis
    fc: int  # per axis, for each of the two colour axes

    @classmethod
    def for_patch(cls, k: int, freqs: int | None = None, chroma_freqs: int | None = None) -> FeatureSpace:
        """The default space for patch size k (`kept_freqs`), or the given frequency counts."""
        f, fc = kept_freqs(k)
        return cls(
            k, min(k, f if freqs is None else freqs), min(k, fc if chroma_freqs is None else chroma_freqs)
        )

    @property
    def dims(self) -> int:
        """Length of a feature vector."""
        return self.f * self.f + 2 * self.fc * self.fc

    def bases(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The luminance and chroma DCT bases (f×k, fc×k) in like's dtype and device."""
        return cosine_basis(self.k, self.f).to(like), cosine_basis(self.k, self.fc).to(like)


def patch_features(patches: torch.Tensor, space: FeatureSpace) -> torch.Tensor:
    """Features of gathered patches M×k×k×3 (rows, columns, opponent channels last): M×D.

    Order: luminance then the two colour axes; per channel y frequency, then x frequency.
    """
    luma, chroma = space.bases(patches)
    out = []
    for basis, channels in ((luma, patches[..., :1]), (chroma, patches[..., 1:])):
        along_x = torch.einsum("myxc,fx->mcyf", channels, basis)
        coef = torch.einsum("mcyf,ey->mcef", along_x, basis)
        out.append(coef.reshape(coef.shape[0], -1))
    return torch.cat(out, 1)


def image_features(
    padded: torch.Tensor, space: FeatureSpace, ys: range, xs: range, axes: torch.Tensor | None = None
) -> torch.Tensor:
    """Features of the patches centred on ys×xs of a 3×H×W image padded by (k−1)/2: rows × D × cols.

    Separable: a pass along x (a 1-D convolution per DCT vector), then one along y as a matrix product
    over each row's k-row window, read in place from the first pass's output (rows, frequencies and
    columns in that order, so a window is one contiguous run). O(k·f) per pixel, not O(k²·f²), and no
    buffer k times the image. With `axes` (D×d) the projection onto them is folded into the y pass
    (rows × d × cols), so the D features are never stored. Each row comes out as a D×cols block: a
    ready tile of queries for `attend`.
    """
    k, rows, cols = space.k, len(ys), len(xs)
    luma, chroma = space.bases(padded)
    pieces = []
    offset = 0
    out = None
    for basis, channels in ((luma, padded[:1]), (chroma, padded[1:])):
        c, f = channels.shape[0], basis.shape[0]
        band = channels[:, ys.start : ys.stop + k - 1, xs.start : xs.stop + k - 1]
        tall = band.shape[1]
        along_x = F.conv1d(band.reshape(c * tall, 1, -1), basis[:, None, :]).reshape(c, tall, f * cols)
        for channel in along_x:
            windows = channel.as_strided((rows, k, f * cols), (f * cols, f * cols, 1))
            if axes is None:
                pieces.append(torch.matmul(basis, windows).reshape(rows, f * f, cols))  # (e, f) per row
                continue
            # Σ_e axes[(e, f), d]·basis[e, j] makes one d × (k·f) matrix for the whole y pass.
            fold = torch.einsum("efd,ej->djf", axes[offset : offset + f * f].reshape(f, f, -1), basis)
            windows = channel.as_strided((rows, k * f, cols), (f * cols, cols, 1))
            part = torch.matmul(fold.reshape(fold.shape[0], k * f), windows)
            out = part if out is None else out.add_(part)
            offset += f * f
    if axes is None:
        return torch.cat(pieces, 1)
    assert out is not None
    return out


def key_budget(pixels: int, most: int = 8192) -> int:
    """Keys per step for an image of `pixels` pixels: LOGITS_PER_STEP in all, 2048 to `most`.

    A 256² or 512² level's references are upsampled, so neighbouring positions repeat each other and
    fewer keys per position lose little (bench/bench_patch.py measures it).
    """
    return max(min(FEWEST_KEYS, most), min(most, LOGITS_PER_STEP // pixels))


def principal_axes(keys: torch.Tensor, dims: int) -> torch.Tensor | None:
    """The `dims` directions (D×dims) along which sampled keys (M×D) vary most; None = keep all D.

    Dropping directions along which the keys vary little changes every key's distance to a query by
    nearly the same amount, which the softmax ignores: of all d-dimensional projections, the keys'
    principal axes lose the least. None when that would save little (dims over half of D).
    """
    if 2 * dims > keys.shape[1] or keys.shape[0] < dims:
        return None
    centred = (keys - keys.mean(0)).float()
    # Single precision: the axes only choose what patches are compared on, and its leading subspace
    # matches float64's for about half the time of the eigendecomposition.
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending
    return vectors[:, -dims:].to(keys.dtype)


def project(features: torch.Tensor, axes: torch.Tensor | None) -> torch.Tensor:
    """Features (…×D) on the principal axes (D×d); unchanged without axes."""
    return features if axes is None else features @ axes


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


def sample_positions(
    counts: list[int], allowed: list[torch.Tensor], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`counts[i]` distinct positions out of `allowed[i]` (flat indices) per reference i: (owner, index)."""
    picks = [
        where[torch.randperm(len(where), generator=generator)[:count]]
        for where, count in zip(allowed, counts, strict=True)
    ]
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return owner, torch.cat(picks)


def _gather(padded: torch.Tensor, owner: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, k: int):
    """k×k windows with top-left (ys, xs) of channels-last padded references: M×k×k×C.

    One index into the references' unfolded windows copies each key's window whole, where broadcast
    coordinates for every pixel of every window made torch index each pixel on its own.
    """
    windows = padded.unfold(1, k, 1).unfold(2, k, 1)  # N × H' × W' × C × k × k, a view
    return windows[owner, ys, xs].permute(0, 2, 3, 1)


def _block(
    keys: torch.Tensor,
    a: float,
    values: torch.Tensor,
    owner: torch.Tensor,
    counts: list[int],
    positions: list[int],
    excluded: torch.Tensor | None = None,
) -> KeyBlock:
    # Each sampled key stands for positions / count positions of its reference: without this importance
    # weight a reference given more keys would gain weight just for that, and its share would snowball.
    ratio = torch.tensor(positions, dtype=keys.dtype) / torch.tensor(counts, dtype=keys.dtype).clamp(min=1)
    log_count = ratio.log().to(keys.device)[owner]
    if excluded is not None:  # sampled positions a key mask shuts out: unbiased, as they are drawn evenly
        log_count = log_count.masked_fill(excluded, EXCLUDED)
    return KeyBlock(keys * a, keys.pow(2).sum(-1) * (a * a), values, owner, log_count)


def fast_patch_attention(
    x_t: torch.Tensor,
    refs: torch.Tensor,
    a: float,
    b: float,
    k: int,
    borders: Borders,
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
    dims: int | None = 32,
    edge_keys: float = EDGE_KEYS,
    should_stop: Callable[[], bool] | None = None,
) -> Estimate:
    """The fast ELS estimate (an approximation; see the module docstring), region by region.

    A budget of `max_keys` key positions (fewer for wide patches, so gathering them stays under
    `max_gather` floats) is split among the references by `shares`. Pixels near an edge share one
    sample of positions along the edge per band, `edge_keys` times that budget, taken at their own
    distance from it. `log_prior` is N or N×H×W; `key_mask` (N×H×W bool) limits each reference's keys
    to where it is True.
    """
    n, c, h, w = refs.shape
    global_prior, pixel_prior = split_prior(log_prior, n)
    space = FeatureSpace.for_patch(k, freqs, chroma_freqs)
    pad = (k - 1) // 2
    padded_x = pad_image(to_opponent(x_t[None])[0], pad, borders != "paper")
    # Only wrapped keys reach past a reference's edge; every other key window lies inside it (the edge
    # bands gather only their rows inside), so the references need no padded copy: `at` moves a
    # position in padded coordinates to theirs.
    wrap = borders == "wrap"
    padded_refs, at = opponent_padded(refs, pad if wrap else 0, wrap), 0 if wrap else -pad
    total = max(n, min(max_keys, max_gather // (c * k * k)))
    split = torch.ones(n) if shares is None else shares.float().cpu()
    x0 = torch.empty(c, h, w, dtype=x_t.dtype, device=x_t.device)
    weights = torch.empty(n, h, w, dtype=x_t.dtype, device=x_t.device) if pixel_weights else None
    share_sum = torch.zeros(n, dtype=x_t.dtype, device=x_t.device)
    scale = 1.0 / (b * b)

    def run(ys: range, xs: range, queries: torch.Tensor, block: KeyBlock, columns: bool = False) -> None:
        """Estimate pixels ys×xs from their queries: d × pixels, rows × d × cols (a tile per row), or
        with `columns` cols × d × rows (a tile per column)."""
        prior = pixel_slice(pixel_prior, ys, xs)
        if columns and prior is not None:
            prior = prior.reshape(n, len(ys), len(xs)).transpose(1, 2).reshape(n, -1)
        mix, per_ref, summed = attend(
            queries, [block], scale, global_prior, pixel_prior=prior,
            pixel_weights=pixel_weights, low_precision=low_precision, should_stop=should_stop,
        )  # fmt: skip

        def placed(out: torch.Tensor) -> torch.Tensor:
            if columns:
                return out.reshape(out.shape[0], len(xs), len(ys)).transpose(1, 2)
            return out.reshape(out.shape[0], len(ys), len(xs))

        window = (slice(None), slice(ys.start, ys.stop), slice(xs.start, xs.stop))
        x0[window] = placed(mix)
        if weights is not None and per_ref is not None:
            weights[window] = placed(per_ref)
        share_sum.add_(summed)

    # The region whose keys are whole patches (the interior, or everything when tiling) comes first:
    # its sampled keys decide the principal axes every region is compared on.
    parts = regions(h, w, k, borders)
    parts.sort(key=lambda r: (r.key_ys is None) + (r.key_xs is None))
    axes: torch.Tensor | None = None
    corners = []
    for region in parts:
        if region.key_ys is None and region.key_xs is None:
            corners.append(region)
        elif region.key_ys is not None and region.key_xs is not None:
            ky, kx = region.key_ys, region.key_xs
            everywhere = torch.arange(len(ky) * len(kx))
            if key_mask is None:
                allowed = [everywhere] * n
            else:
                inside = key_mask[:, ky.start : ky.stop, kx.start : kx.stop].reshape(n, -1).cpu()
                allowed = [everywhere[m] for m in inside]
            positions = [len(where) for where in allowed]
            counts = key_counts(split, total, positions)
            owner, index = (t.to(x_t.device) for t in sample_positions(counts, allowed, generator))
            ys, xs = ky.start + index // len(kx), kx.start + index % len(kx)
            keys = patch_features(_gather(padded_refs, owner, ys + at, xs + at, k), space)
            if dims is not None and axes is None:
                # At high noise wide patches keep ~800 frequency dims; 64 axes there (55ccc55) made
                # frames (tests/test_patch_quality.py, jewelry seed 1: outer ring 0.034 > 0.031),
                # none held them all in the edge bands (128² peak 0.44 → 0.59 GB); 96 and 128 pass.
                axes = principal_axes(keys, dims if a > b else HIGH_NOISE_DIMS)
            block = _block(project(keys, axes), a, refs[owner, :, ys, xs], owner, counts, positions)
            rows = max(1, CHUNK // (space.dims * len(region.xs)))
            for y0 in range(region.ys.start, region.ys.stop, rows):
                ys = range(y0, min(region.ys.stop, y0 + rows))
                run(
                    ys,
                    region.xs,
                    image_features(padded_x, space, ys, region.xs, axes),
                    block,
                )
        else:
            _edge_band(
                region,
                padded_x,
                padded_refs,
                at,
                refs,
                a,
                space,
                axes,
                split,
                max(n, round(total * edge_keys)),
                generator,
                key_mask,
                run,
            )
    for region in corners:
        same = local_score(x_t, refs, a, b, k, False, log_prior, key_mask, window=(region.ys, region.xs))
        assert same.ref_weights is not None
        window = (slice(None), slice(region.ys.start, region.ys.stop), slice(region.xs.start, region.xs.stop))
        x0[window] = same.x0
        if weights is not None:
            weights[window] = same.ref_weights
        share_sum.add_(same.ref_weights.sum((1, 2)))
    return Estimate(x0, weights, share_sum / (h * w))


def _edge_band(
    region: Region,
    padded_x: torch.Tensor,
    padded_refs: torch.Tensor,
    at: int,
    refs: torch.Tensor,
    a: float,
    space: FeatureSpace,
    axes: torch.Tensor | None,
    split: torch.Tensor,
    total: int,
    generator: torch.Generator,
    key_mask: torch.Tensor | None,
    run: Callable[[range, range, torch.Tensor, KeyBlock, bool], None],
) -> None:
    """Rows (or columns) near an edge: each matches keys on its own row, along the edge anywhere inside.

    One sample of positions along the edge serves every row of the band: the strip of references they
    span is gathered once and its features taken for all rows together, separably, like the queries'.
    `padded_refs` (channels last) holds a position p of the padded references at p + at.
    """
    n, k = refs.shape[0], space.k
    rows_own = region.key_ys is None
    along = region.key_xs if rows_own else region.key_ys
    band = region.ys if rows_own else region.xs
    assert along is not None
    counts = key_counts(split, min(total, n * len(along)), len(along))
    owner, index = (
        t.to(refs.device) for t in sample_positions(counts, [torch.arange(len(along))] * n, generator)
    )
    pos = along.start + index
    # Only the strip's rows inside the reference are gathered: past its edge the padding is zeros.
    pad, side = (k - 1) // 2, refs.shape[2 if rows_own else 3]
    first, stop = max(band.start, pad), min(band.stop + k - 1, pad + side)
    strip = _strip(padded_refs, owner, pos + at, first + at, stop - first, k, transposed=not rows_own)
    keys = strip_features(
        strip, space, transposed=not rows_own, axes=axes, rows=len(band), first=first - band.start
    )
    # Every row (or column) of the band in one attention call, a tile of queries and keys each.
    queries = image_features(padded_x, space, region.ys, region.xs, axes)  # rows × d × cols
    lines = slice(band.start, band.stop)
    if rows_own:  # refs and key_mask read at (line, pos) for each line of the band
        values = refs.permute(2, 0, 3, 1)[lines][:, owner, pos]  # lines × M × C
        excluded = None if key_mask is None else ~key_mask.permute(1, 0, 2)[lines][:, owner, pos]
    else:
        values = refs.permute(3, 0, 2, 1)[lines][:, owner, pos]
        excluded = None if key_mask is None else ~key_mask.permute(2, 0, 1)[lines][:, owner, pos]
        queries = queries.permute(2, 1, 0)  # cols × d × rows
    block = _block(keys, a, values, owner, counts, [len(along)] * n, excluded)
    run(region.ys, region.xs, queries, block, not rows_own)


def _strip(
    padded: torch.Tensor,
    owner: torch.Tensor,
    pos: torch.Tensor,
    start: int,
    length: int,
    k: int,
    transposed: bool,
) -> torch.Tensor:
    """For each key, the strip of `length` rows from `start` and k columns from `pos` of its reference
    (channels-last N×H×W×C, padded): M × length × C × k. `transposed` swaps rows and columns (a strip down
    the left or right edge), so one code path serves both edges.

    Unfolded views of one slab, indexed by (reference, position): each key copies whole runs of k pixels.
    """
    if transposed:
        slab = padded[:, :, start : start + length]  # N × H × length × C
    else:
        slab = padded[:, start : start + length].transpose(1, 2)  # N × W × length × C
    return slab.unfold(1, k, 1)[owner, pos]  # M × length × C × k


def strip_features(
    strip: torch.Tensor,
    space: FeatureSpace,
    transposed: bool = False,
    axes: torch.Tensor | None = None,
    rows: int | None = None,
    first: int = 0,
) -> torch.Tensor:
    """Features of every k×k window down a strip M × (L+k−1) × C × k (see `_strip`): L × M × D.

    Separable like `image_features`: a pass across the strip (its k columns), laid out as rows ×
    frequencies × keys, then one down it as a matrix product over each window of k rows. With `axes`
    (D×d) the projection is folded into that pass (L × M × d). `transposed`: the strip was taken with
    rows and columns swapped, so its frequencies swap back to the order of `patch_features`. `strip`
    may hold only rows first…first+len of the strip (the rest zeros: padding past a reference's edge,
    neither gathered nor multiplied); `rows` is then L. One product per window: a batched product over
    overlapping strided windows made torch copy them all (rows × k·f × M floats) first.
    """
    k = space.k
    m, held = strip.shape[0], strip.shape[1]
    rows = held - k + 1 if rows is None else rows
    luma, chroma = space.bases(strip)
    bases = (luma, chroma, chroma)
    if axes is None:  # only small patches: the zero rows back in place, every window in one product
        strip = F.pad(strip, (0, 0, 0, 0, first, rows + k - 1 - first - held))
        pieces = []
        for channel, basis in enumerate(bases):
            f = basis.shape[0]
            across = torch.matmul(strip[:, :, channel], basis.T).permute(1, 2, 0).contiguous()  # held×f×M
            windows = across.as_strided((rows, k, f * m), (f * m, f * m, 1))
            part = torch.matmul(basis, windows).reshape(rows, f, f, m)  # down-frequency, across, keys
            if transposed:
                part = part.transpose(1, 2)
            pieces.append(part.reshape(rows, f * f, m))
        return torch.cat(pieces, 1).transpose(1, 2)
    # A strip gathered transposed has its k axis outermost: one copy into M × rows × C × k makes each
    # channel's pass a plain product, where torch copied it window by window (several times slower).
    # Then the three channels side by side (their across-coefficients, F = f + 2·fc per strip row, and
    # their folds likewise), so each window is one product written in place.
    strip = strip.contiguous() if transposed else strip
    across = torch.cat([torch.matmul(strip[:, :, c], basis.T) for c, basis in enumerate(bases)], 2)
    width = across.shape[2]
    flat = across.permute(1, 2, 0).reshape(held * width, m)  # (strip row, frequency) × keys
    folds = []
    offset = 0
    for basis in bases:
        f = basis.shape[0]
        coef = axes[offset : offset + f * f].reshape(f, f, -1)
        offset += f * f
        if transposed:
            coef = coef.transpose(0, 1)
        # Σ_e coef[e, q, d]·basis[e, y]: a d × k × f block of the matrix for the pass down the strip.
        folds.append(torch.einsum("eqd,ey->dyq", coef, basis))
    fold = torch.cat(folds, 2).reshape(axes.shape[1], k * width)
    out = strip.new_zeros(rows, axes.shape[1], m)
    for row in range(rows):  # the window's rows that hold image: [lo, hi) of the strip
        lo, hi = max(row, first), min(row + k, first + held)
        if hi > lo:
            torch.mm(
                fold[:, (lo - row) * width : (hi - row) * width],
                flat[(lo - first) * width : (hi - first) * width],
                out=out[row],
            )
    return out.transpose(1, 2)
