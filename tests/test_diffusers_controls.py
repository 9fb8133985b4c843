"""Latent controls, each tested for its effect: variation noise, prompt blend, concepts, seamless tiling."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_sd, build_tiny_sdxl

import backend.diffusers_engine as engine_module
from backend.diffusers_engine import DiffusersEngine
from backend.events import Done
from backend.latent_controls import Tiling, slerp
from backend.request import Concept


def _image(engine, request) -> np.ndarray:
    events = list(engine.generate(request, threading.Event()))
    assert isinstance(events[-1], Done)
    return events[-1].image


def test_slerp_is_exact_at_the_ends_and_keeps_the_norm() -> None:
    a, b = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randn(4, 8, 8)
    assert slerp(0.0, a, b) is a and slerp(1.0, a, b) is b
    mid = slerp(0.5, a, b)
    assert abs(mid.norm() / a.norm() - 1) < 0.1  # a straight line would lose ~30 % of the norm
    assert (a + b).div(2).norm() / a.norm() < 0.8


def test_variation_strength_ends_are_the_two_seeds(tiny_engine, tiny_request) -> None:
    base = _image(tiny_engine, tiny_request)
    other = _image(tiny_engine, tiny_request.replace(seed=99))
    at0 = _image(tiny_engine, tiny_request.replace(variation_seed=99, variation_strength=0.0))
    at1 = _image(tiny_engine, tiny_request.replace(variation_seed=99, variation_strength=1.0))
    half = _image(tiny_engine, tiny_request.replace(variation_seed=99, variation_strength=0.5))
    np.testing.assert_array_equal(at0, base)
    np.testing.assert_array_equal(at1, other)
    assert not np.array_equal(half, base) and not np.array_equal(half, other)


def test_prompt_blend_ends_are_the_two_prompts(tiny_engine, tiny_request) -> None:
    a = _image(tiny_engine, tiny_request)
    b = _image(tiny_engine, tiny_request.replace(prompt="a blue whale"))
    blended = tiny_request.replace(prompt_b="a blue whale")
    np.testing.assert_array_equal(_image(tiny_engine, blended.replace(blend=0.0)), a)
    np.testing.assert_array_equal(_image(tiny_engine, blended.replace(blend=1.0)), b)
    half = _image(tiny_engine, blended.replace(blend=0.5))
    assert not np.array_equal(half, a) and not np.array_equal(half, b)


def test_concept_direction_changes_less_when_it_starts_late(tiny_engine, tiny_request) -> None:
    r = tiny_request.replace(steps=6)
    base = _image(tiny_engine, r).astype(float)
    concept = Concept(positive="ornate gold filigree", negative="plain", weight=3.0)
    early = _image(tiny_engine, r.replace(concepts=(concept,))).astype(float)
    late = _image(tiny_engine, r.replace(concepts=(replace(concept, start=0.67),))).astype(float)
    change_early, change_late = np.abs(early - base).mean(), np.abs(late - base).mean()
    assert change_early > 1.0
    assert 0 < change_late < change_early
    weightless = _image(tiny_engine, r.replace(concepts=(Concept("ornate", "plain", weight=0.0),)))
    np.testing.assert_array_equal(weightless, base.astype(np.uint8))


def test_sdxl_blend_and_concept_move_the_pooled_embedding_too(tiny_request) -> None:
    engine = DiffusersEngine(device="cpu")
    engine.use_pipeline(build_tiny_sdxl(), "tiny")
    b = _image(engine, tiny_request.replace(prompt="a blue whale"))
    np.testing.assert_array_equal(_image(engine, tiny_request.replace(prompt_b="a blue whale", blend=1.0)), b)
    moved = _image(engine, tiny_request.replace(concepts=(Concept("ornate", "plain", weight=3.0),)))
    assert np.abs(moved.astype(float) - _image(engine, tiny_request)).mean() > 1.0


# --- tiling --------------------------------------------------------------------------------------------


def _rolled_noise(monkeypatch, shift: int) -> None:
    """Roll the engine's real starting noise sideways by `shift` latent pixels."""
    real = engine_module.initial_noise
    monkeypatch.setattr(
        engine_module, "initial_noise", lambda *a, **k: torch.roll(real(*a, **k), shift, dims=-1)
    )


def test_tiled_output_wraps_around_seamlessly(tiny_engine, tiny_request, monkeypatch) -> None:
    r = tiny_request.replace(tiling=True, width=128, height=64, steps=4)
    # A tiled run is a torus: shifting the noise by 2 latent pixels shifts the image by 16 pixels with
    # nothing at the old edge, so the wrap-around pair is just another interior pair. (A ratio of the
    # wrap-around difference to interior differences cannot tell: this tiny random model's untiled images
    # score 0.83-0.97 on it too.) The untiled run below must fail the same check.
    _rolled_noise(monkeypatch, 2)
    shifted = tiny_engine.render(r)
    monkeypatch.undo()
    np.testing.assert_allclose(shifted, np.roll(tiny_engine.render(r), 16, axis=1), atol=1e-4)
    _rolled_noise(monkeypatch, 2)
    untiled = tiny_engine.render(r.replace(tiling=False))
    monkeypatch.undo()
    assert np.abs(untiled - np.roll(tiny_engine.render(r.replace(tiling=False)), 16, axis=1)).max() > 0.05


def test_vae_encoder_downsample_pad_wraps() -> None:
    vae = build_tiny_sd().vae
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def shift_error() -> float:
        with torch.no_grad():
            a = vae.encode(torch.roll(x, 16, dims=-1)).latent_dist.mean
            b = torch.roll(vae.encode(x).latent_dist.mean, 2, dims=-1)
        return float((a - b).abs().max())

    tiling = Tiling()
    tiling.apply([vae])
    assert len(tiling.downsamples) == 3  # the encoder's explicit (0,1,0,1) pads
    assert shift_error() < 1e-4
    # Undo only the downsample patch: the zero pad brings the seam back.
    for module, conv in tiling.downsamples:
        module.conv, module.padding = conv, 0
    assert shift_error() > 1e-2
    tiling.downsamples.clear()
    tiling.remove()


def test_img2img_on_a_tile_stays_seamless(tiny_engine, tiny_request, monkeypatch) -> None:
    from backend.images import Picture

    tile = Picture(_image(tiny_engine, tiny_request.replace(tiling=True, width=128, height=64)))
    r = tiny_request.replace(tiling=True, width=128, height=64, init_image=tile, strength=0.6, steps=5)
    # With the VAE posterior's mode instead of a sample, the whole img2img path (encoder included) is a
    # torus: shifting the tile and the noise together shifts the output.
    real = engine_module.retrieve_latents
    monkeypatch.setattr(
        engine_module, "retrieve_latents", lambda out, generator=None: real(out, sample_mode="argmax")
    )
    plain = tiny_engine.render(r)
    _rolled_noise(monkeypatch, 2)
    shifted_tile = Picture(np.roll(tile.pixels, 16, axis=1))
    shifted = tiny_engine.render(r.replace(init_image=shifted_tile))
    np.testing.assert_allclose(shifted, np.roll(plain, 16, axis=1), atol=1e-4)
    # Without tiling, the edges are edges: the same shift does not commute.
    untiled = r.replace(tiling=False)
    untiled_shifted = tiny_engine.render(untiled.replace(init_image=shifted_tile))
    monkeypatch.undo()
    monkeypatch.setattr(
        engine_module, "retrieve_latents", lambda out, generator=None: real(out, sample_mode="argmax")
    )
    assert np.abs(untiled_shifted - np.roll(tiny_engine.render(untiled), 16, axis=1)).max() > 0.05


def test_tiling_does_not_leak_into_the_next_request(tiny_request) -> None:
    engine = DiffusersEngine(device="cpu")
    pipe = build_tiny_sd()
    engine.use_pipeline(pipe, "tiny")
    before = _image(engine, tiny_request)
    tiled = _image(engine, tiny_request.replace(tiling=True))
    after = _image(engine, tiny_request)
    assert not np.array_equal(tiled, before)
    np.testing.assert_array_equal(after, before)
    convs = [m for m in [*pipe.unet.modules(), *pipe.vae.modules()] if isinstance(m, torch.nn.Conv2d)]
    assert all(c.padding_mode == "zeros" for c in convs)


# --- resuming a late-acting concept ---------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])  # generator state; multistep history
def test_late_concept_change_resumes_mid_run_with_the_same_pixels(tiny_request, scheduler) -> None:
    r = tiny_request.replace(steps=6, scheduler=scheduler)
    late = Concept("ornate gold filigree", "plain", weight=2.0, start=0.5)
    fresh = DiffusersEngine(device="cpu")
    fresh.use_pipeline(build_tiny_sd(), "tiny")
    expected = _image(fresh, r.replace(concepts=(late,)))

    engine = DiffusersEngine(device="cpu")
    pipe = build_tiny_sd()
    engine.use_pipeline(pipe, "tiny")
    _image(engine, r.replace(concepts=(replace(late, weight=1.0),)))  # the slider was here before the drag
    calls = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    events = list(engine.generate(r.replace(concepts=(late,)), threading.Event()))
    assert [e.step for e in events[:-1]] == [4, 5, 6] and len(calls) == 3  # steps 1-3 reused
    np.testing.assert_array_equal(events[-1].image, expected)
    # Anything else changed (here the prompt), or a concept from step 0: a full run.
    calls.clear()
    _image(engine, r.replace(prompt="a grey heron", concepts=(late,)))
    assert len(calls) == 6
    calls.clear()
    _image(engine, r.replace(prompt="a grey heron", concepts=(late, Concept("night", "day", 1.0, 0.0))))
    assert len(calls) == 6
