"""The patch engine end to end on small images: events, memorisation, creativity, equivariance, editing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend import els
from backend.attribution import attribution_to_rgb
from backend.engines import Engines
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.patch_engine import PatchEngine, initial_noise
from backend.request import Request

SIZE = 32


@pytest.fixture(scope="module")
def engine():
    return PatchEngine(max_keys=2048)  # fewer keys than the default keep the suite fast


def run(engine, **fields):
    fields.setdefault("steps", 8)
    request = Request(width=SIZE, height=SIZE, **fields)
    return list(engine.generate(request, threading.Event()))


def references_for(engine, done):
    """The request-sized references the run drew from, as uint8 images."""
    refs = engine.references(done.request.model)
    fitted = engine._fit(refs, done.request.width, done.request.height)
    pick = [refs.names.index(n) for n in done.extras["references"]]
    return [np.round((fitted[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for i in pick]


def nearest_mad(image, refs):
    """Mean absolute difference (0–1 scale) to the closest reference."""
    return min(np.abs(image.astype(float) - r.astype(float)).mean() / 255 for r in refs)


def patch_distance(image, refs, k=3):
    """RMS distance (0–1 scale) from each k×k patch of the image to its nearest reference patch, averaged."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    q = F.unfold(x, k)[0].T
    stack = torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 255 for r in refs])
    keys = F.unfold(stack, k).permute(0, 2, 1).reshape(-1, q.shape[1])
    return float(torch.cdist(q, keys).min(1).values.mean() / np.sqrt(q.shape[1]))


def test_steps_preview_then_done_with_extras_and_attribution(engine):
    events = run(engine, prompt="jewelry", seed=3)
    steps, done = events[:-1], events[-1]
    assert [e.step for e in steps] == list(range(1, 9)) and all(isinstance(e, StepEvent) for e in steps)
    assert all(e.preview.shape == (SIZE, SIZE, 3) and e.preview.dtype == np.uint8 for e in steps)
    assert isinstance(done, Done) and done.image.shape == (SIZE, SIZE, 3)
    # The last preview is the last estimate, which is the final image.
    assert np.array_equal(steps[-1].preview, done.image)
    extras = done.extras
    assert extras["engine"] == "patch" and extras["model"] == "references" and len(extras["model_hash"]) == 16
    assert {"hammered_gold", "pearls", "ruby_facets"} <= set(extras["references"])
    assert "brick" not in extras["references"]
    assert sum(extras["reference_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert done.attribution.shape == (SIZE, SIZE, 2) and done.attribution.dtype == np.float32
    index, weight = done.attribution[..., 0], done.attribution[..., 1]
    assert index.min() >= 0 and index.max() < len(extras["references"])
    assert (weight > 0).all() and (weight <= 1 + 1e-6).all()
    rgb = attribution_to_rgb(done.attribution)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8


def test_default_engine_through_engines_uses_shipped_references():
    events = list(
        Engines().generate(Request(width=SIZE, height=SIZE, steps=2, prompt="brick"), threading.Event())
    )
    assert events[-1].extras["references"] == ["brick"]


def test_same_request_same_image_and_seed_changes_it(engine):
    a, b = run(engine, seed=5, prompt="wood")[-1], run(engine, seed=5, prompt="wood")[-1]
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, run(engine, seed=6, prompt="wood")[-1].image)


def test_variation_strength_moves_gradually_away_from_the_seed(engine):
    base = run(engine, seed=1, prompt="leather")[-1].image.astype(float)
    near = run(engine, seed=1, prompt="leather", variation_seed=9, variation_strength=0.05)[-1].image
    far = run(engine, seed=1, prompt="leather", variation_seed=9, variation_strength=1.0)[-1].image
    assert np.abs(near - base).mean() < np.abs(far - base).mean()


def test_memorisation_at_full_locality(engine):
    for seed in range(3):
        done = run(engine, seed=seed, locality=1.0)[-1]
        assert nearest_mad(done.image, references_for(engine, done)) < 0.02
        assert max(done.extras["reference_shares"].values()) > 0.99


def test_lower_locality_moves_away_from_references(engine):
    def distance(locality):
        total = 0.0
        for seed in range(2):
            done = run(engine, seed=seed, prompt="jewelry", locality=locality)[-1]
            refs = references_for(engine, done)
            total += nearest_mad(done.image, refs) + patch_distance(done.image, refs, 3)
        return total / 2

    distances = [distance(loc) for loc in (1.0, 0.75, 0.5, 0.25)]
    print(f"distance to references at locality 1.0, 0.75, 0.5, 0.25: {distances}")
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False))


@pytest.mark.parametrize("exact", [False, True])
def test_tiling_is_equivariant_to_rolling_the_noise(engine, exact, monkeypatch):
    dy, dx = 5, 11
    shape = (3, SIZE, SIZE)

    def rolled(seed, *_args, **_kw):
        return initial_noise(seed, shape).roll((dy, dx), dims=(1, 2))

    request = dict(seed=4, tiling=True, prompt="metal", exact=exact, steps=6)
    plain = run(engine, **request)[-1].image
    monkeypatch.setattr("backend.patch_engine.initial_noise", rolled)
    shifted = run(engine, **request)[-1].image
    diff = np.abs(np.roll(plain, (dy, dx), axis=(0, 1)).astype(int) - shifted.astype(int))
    assert diff.max() <= 1  # uint8 rounding of float error


def sketch_and_mask():
    sketch = np.zeros((SIZE, SIZE, 3), np.uint8)
    sketch[:, : SIZE // 2] = (200, 40, 40)
    sketch[:, SIZE // 2 :] = (30, 30, 160)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    return sketch, mask


def test_inpainting_changes_only_masked_pixels(engine):
    sketch, mask = sketch_and_mask()
    # Without the structure guide, which would keep the old content's layout under the mask.
    request = dict(init_image=Picture(sketch), mask=Picture(mask), strength=1.0, structure_steps=0.0)
    done = run(engine, **request)[-1]
    keep = np.ones_like(mask, dtype=bool)
    keep[5:27, 5:27] = False  # the mask and its feathered edge (1.5 px here, blurred ~3 px)
    assert np.array_equal(done.image[keep], sketch[keep])
    keep = mask == 0
    assert np.abs(done.image[~keep].astype(int) - sketch[~keep]).mean() > 10


def test_img2img_keeps_the_sketch_layout(engine):
    sketch, _ = sketch_and_mask()
    done = run(engine, init_image=Picture(sketch), strength=0.6, seed=2)[-1]
    assert not np.array_equal(done.image, sketch)

    def low(img):
        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
        return F.avg_pool2d(x, 8).flatten()

    corr = np.corrcoef(low(done.image), low(sketch))[0, 1]
    assert corr > 0.7
    # Fewer steps than the request: strength 0.6 of 8 steps.
    assert len(run(engine, init_image=Picture(sketch), strength=0.6)) == els.img2img_steps(8, 0.6) + 1


def test_reference_weight_raises_that_references_share(engine):
    plain = run(engine, prompt="gem", seed=1)[-1].extras["reference_shares"]
    boosted = run(engine, prompt="gem", seed=1, reference_weights=(("ruby_facets", 6.0),))[-1]
    assert boosted.extras["reference_shares"]["ruby_facets"] > plain["ruby_facets"]


def test_ls_mode_runs_and_differs(engine):
    els_image = run(engine, seed=2, prompt="stone")[-1].image
    ls_image = run(engine, seed=2, prompt="stone", patch_mode="ls")[-1].image
    assert not np.array_equal(els_image, ls_image)


def test_cancel_yields_no_done(engine):
    cancel = threading.Event()
    events = []
    for event in engine.generate(Request(width=SIZE, height=SIZE, steps=8), cancel):
        events.append(event)
        if len(events) == 2:
            cancel.set()
    assert len(events) == 2 and not any(isinstance(e, Done) for e in events)
