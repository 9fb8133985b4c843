"""The engine's own loop gives diffusers' pipeline images (float32, CPU, same components, seed, scheduler)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from tiny_models import build_tiny_sd, build_tiny_sdxl

from backend.diffusers_engine import DiffusersEngine
from backend.events import Done
from backend.images import Picture
from backend.request import Request
from backend.sampling import to_uint8
from backend.schedulers import make_scheduler

TOLERANCE = 1e-4


def _engine(pipe) -> DiffusersEngine:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    return engine


def _request(**changes) -> Request:
    base = Request(
        engine="diffusers",
        model="tiny",
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        seed=11,
        steps=4,
        guidance=6.0,
        width=64,
        height=64,
    )
    return base.replace(**changes)


def _pipeline_kwargs(r: Request) -> dict:
    return {
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt or None,
        "num_inference_steps": r.steps,
        "guidance_scale": r.guidance,
        "generator": torch.Generator("cpu").manual_seed(r.seed),
        "output_type": "np",
    }


def _final(engine: DiffusersEngine, r: Request) -> Done:
    events = list(engine.generate(r, threading.Event()))
    assert isinstance(events[-1], Done)
    return events[-1]


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m", "ddim"])
def test_txt2img_equals_pipeline(scheduler: str) -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    r = _request(scheduler=scheduler)
    ours = engine.render(r)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    theirs = pipe(height=r.height, width=r.width, **_pipeline_kwargs(r)).images[0]
    assert ours.shape == theirs.shape == (64, 64, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    # Done.image is exactly the float image rounded: the comparison above covers what the person gets.
    np.testing.assert_array_equal(_final(engine, r).image, to_uint8(ours))


def test_img2img_equals_pipeline() -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    init = Picture(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    r = _request(init_image=init, strength=0.6, steps=5)
    ours = engine.render(r)
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = make_scheduler("euler", pipe.scheduler.config)
    theirs = img2img(image=init.to_pil(), strength=r.strength, **_pipeline_kwargs(r)).images[0]
    assert np.abs(ours - theirs).max() <= TOLERANCE
    # strength 0.6 of 5 steps runs 3 of them, from the right timestep
    assert sum(1 for e in engine.generate(r, threading.Event()) if not isinstance(e, Done)) == 3


def test_sdxl_equals_pipeline() -> None:
    pipe = build_tiny_sdxl()
    engine = _engine(pipe)
    assert engine.model is not None and engine.model.family == "sdxl"
    for negative in ("", "blurry"):  # empty negative: SDXL's zeroed unconditional embedding
        r = _request(negative_prompt=negative)
        ours = engine.render(r)
        pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
        theirs = pipe(height=r.height, width=r.width, **_pipeline_kwargs(r)).images[0]
        assert np.abs(ours - theirs).max() <= TOLERANCE


def test_parity_would_catch_a_different_seed() -> None:
    """The tolerance is meaningful: a one-off seed gives a clearly different image."""
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    a, b = engine.render(_request(seed=1)), engine.render(_request(seed=2))
    assert np.abs(a - b).max() > 100 * TOLERANCE
