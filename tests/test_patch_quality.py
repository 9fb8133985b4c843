"""What the patch engine's images look like: no frame at the borders; new images made of reference texture.

Issue 11's done-when: the outer ring of an image is no brighter or darker than its neighbour inside by more
than neighbouring rings elsewhere differ; at the default locality an image is no shifted copy of a
reference, yet its 7–15 px patches lie nearer the references' patches than those of a smooth image with the
same layout. Each measure comes with a negative control that must fail it. Runs at 64², 8 steps.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.patch_engine import PatchEngine
from backend.request import Request

SIZE = 64
RING = 4  # pixels per ring, counted in from the edge


@pytest.fixture(scope="module")
def engine():
    return PatchEngine(max_keys=2048)


def generate(engine, prompt, seed, **fields):
    fields.setdefault("steps", 8)
    request = Request(width=SIZE, height=SIZE, seed=seed, prompt=prompt, **fields)
    return list(engine.generate(request, threading.Event()))[-1]


def ring_means(image: np.ndarray) -> np.ndarray:
    """Mean lightness (0–1) of each RING-pixel ring, from the outermost in."""
    light = image.astype(float).mean(2) / 255
    h, w = light.shape
    ys, xs = np.mgrid[:h, :w]
    depth = np.minimum.reduce([ys, h - 1 - ys, xs, w - 1 - xs]) // RING
    return np.array([light[depth == d].mean() for d in range(depth.max() + 1)])


def ring_steps(image: np.ndarray) -> tuple[float, np.ndarray]:
    """How far the outer ring's mean differs from the next ring's, and how far each later pair differs."""
    steps = np.abs(np.diff(ring_means(image)))
    return float(steps[0]), steps[1:]


def fitted_references(engine, done) -> torch.Tensor:
    """The request-sized references the run drew from, N×3×H×W on a 0–1 scale."""
    refs = engine.references(done.request.model)
    fitted = engine._fit(refs, done.request.width, done.request.height)
    pick = [refs.names.index(n) for n in done.extras["references"]]
    return (fitted[pick] + 1) / 2


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def copy_distance(image: torch.Tensor, refs: torch.Tensor, margin: int = SIZE // 8) -> float:
    """Shift-invariant distance to the references: the image's centre (the image less `margin` on each
    side) against every same-sized window of every reference, the smallest mean absolute difference.

    A copy of a reference moved by up to `margin` pixels (or any crop of a reference) scores 0.
    """
    centre = image[:, margin:-margin, margin:-margin]
    ch, cw = centre.shape[1:]
    windows = F.unfold(refs, (ch, cw))  # N × (3·ch·cw) × positions
    return float((windows - centre.reshape(1, -1, 1)).abs().mean(1).min())


def patch_distance(image: torch.Tensor, refs: torch.Tensor, k: int, stride: int = 2) -> float:
    """RMS distance (0–1 scale) from the image's k×k patches to their nearest reference patch, averaged."""
    queries = F.unfold(image[None], k, stride=stride)[0].T
    keys = F.unfold(refs, k).permute(0, 2, 1).reshape(-1, queries.shape[1])
    nearest = torch.cdist(queries, keys).min(1).values
    return float(nearest.mean() / np.sqrt(queries.shape[1]))


def smooth(image: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """The image with its texture blurred away (Gaussian, mirrored edges): same layout and colours."""
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    x = F.pad(image[:, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, taps.reshape(1, 1, 1, -1))
    return F.conv2d(x, taps.reshape(1, 1, -1, 1))[:, 0]


# --- borders --------------------------------------------------------------------------------------------

BORDER_PROMPTS = ("", "jewelry", "brick", "wood", "fabric")


def test_no_frame_the_outer_ring_steps_no_more_than_rings_inside(engine):
    edges, inside = [], []
    for prompt in BORDER_PROMPTS:
        for seed in (0, 1):
            edge, others = ring_steps(generate(engine, prompt, seed).image)
            print(f"{prompt!r} seed {seed}: outer ring step {edge:.3f}, steps inside {np.round(others, 3)}")
            # Per image: the outer ring's step is within what neighbouring rings elsewhere differ by.
            assert edge <= others.max(), (prompt, seed)
            edges.append(edge)
            inside.append(others.mean())
    # Over the runs, the outer step is no larger than a typical step between rings inside.
    print(f"mean outer step {np.mean(edges):.4f}, mean step inside {np.mean(inside):.4f}")
    assert np.mean(edges) <= np.mean(inside)


def framed(image: np.ndarray, lighter: int) -> np.ndarray:
    """The image with its outer ring `lighter` levels (of 255) lighter: a frame."""
    out = image.astype(int)
    depth = np.minimum.reduce(
        np.meshgrid(*(np.minimum(np.arange(n), np.arange(n)[::-1]) for n in out.shape[:2]), indexing="ij")
    )
    out[depth < RING] += lighter
    return np.clip(out, 0, 255).astype(np.uint8)


def test_a_light_frame_fails_the_border_measure(engine):
    # Negative control: the same measure on images given a frame. One 16/255 lighter fails each image's
    # comparison; one 8/255 lighter fails the comparison over the runs.
    images = [generate(engine, prompt, 0).image for prompt in ("", "brick", "fabric")]
    for image in images:
        edge, others = ring_steps(framed(image, 16))
        assert edge > others.max()
    steps = [ring_steps(framed(image, 8)) for image in images]
    assert np.mean([edge for edge, _ in steps]) > np.mean([others.mean() for _, others in steps])


# --- creativity -----------------------------------------------------------------------------------------

# Several references, and a single one: with one reference a copy of it is the easy way out.
CREATIVE_PROMPTS = ("jewelry", "fabric", "brick", "denim")
PATCH_SIZES = (7, 11, 15)
# A shifted or cropped copy of a reference scores 0; the default engine's images 0.036 (denim, a fine
# stationary weave any new image of which is near some crop) to 0.21 (jewelry) in the run that set this.
COPY_FLOOR = 0.015


@pytest.fixture(scope="module")
def creative_runs():
    """At the studio's defaults (12 steps, the engine's key budget): per prompt and seed the image (0–1)
    and the references it drew from."""
    engine = PatchEngine()
    out = []
    for prompt in CREATIVE_PROMPTS:
        for seed in (0, 1):
            done = generate(engine, prompt, seed, steps=12)
            out.append((prompt, seed, as_tensor(done.image), fitted_references(engine, done)))
    return out


def test_default_locality_makes_no_copy_of_any_reference_even_shifted(creative_runs):
    for prompt, seed, image, refs in creative_runs:
        copy = copy_distance(image, refs)
        print(f"{prompt} seed {seed}: shift-invariant copy distance {copy:.3f}")
        assert copy > COPY_FLOOR, (prompt, seed)


def test_a_shifted_copy_of_a_reference_fails_the_copy_measure(creative_runs):
    for prompt, _, _, refs in creative_runs[::2]:
        for dy, dx in ((5, 3), (-7, 6), (0, 8)):
            moved = refs[-1].roll((dy, dx), dims=(1, 2))
            assert copy_distance(moved, refs) < 1e-6 < COPY_FLOOR, prompt
    # The aligned whole-image comparison the earlier test made misses such a copy.
    moved = refs[0].roll((5, 3), dims=(1, 2))
    assert float((moved - refs[0]).abs().mean()) > COPY_FLOOR


def test_patch_distance_sees_texture_the_smooth_baseline_lacks(creative_runs):
    # The measure itself: a reference's own 7–15 px patches are at 0 from it, while the same reference
    # blurred is not, so an image made of reference texture beats the smooth baseline.
    _, _, _, refs = creative_runs[4]  # brick
    for k in PATCH_SIZES:
        assert patch_distance(refs[0], refs, k) < 1e-3 < patch_distance(smooth(refs[0]), refs, k)


@pytest.mark.xfail(
    strict=True,
    reason="issue 11: at 64², 12 steps the default engine's 11-15 px patches lie farther from the "
    "references' patches than a blurred copy of the same image does (e.g. fabric 0.108/0.126 against "
    "0.090/0.103); the exact path also fails at 15 px for jewelry. See the h-patch-core note.",
)
def test_default_locality_patches_are_nearer_the_references_than_a_smooth_image(creative_runs):
    failures = []
    for prompt, seed, image, refs in creative_runs:
        mine = [patch_distance(image, refs, k) for k in PATCH_SIZES]
        blurred = [patch_distance(smooth(image), refs, k) for k in PATCH_SIZES]
        print(f"{prompt} seed {seed}: {PATCH_SIZES} px {np.round(mine, 3)}, smooth {np.round(blurred, 3)}")
        failures += [(prompt, seed, k) for k, m, b in zip(PATCH_SIZES, mine, blurred, strict=True) if m >= b]
    assert not failures, failures
