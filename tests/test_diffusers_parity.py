"""The engine's own loop gives diffusers' pipeline images (float32, CPU, same components, seed, scheduler)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from tiny_models import build_tiny_lcm, build_tiny_sd, build_tiny_sd2, build_tiny_sdxl

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


# --- the other families the README names: SD 2.x (v-prediction) and LCM (guidance embedding) -----------


def test_sd2_v_prediction_equals_pipeline() -> None:
    """An SD 2.x-shaped model predicts v: the engine recognises the family and follows the pipeline."""
    pipe = build_tiny_sd2()
    engine = _engine(pipe)
    assert engine.model is not None and engine.model.family == "sd2"
    for scheduler in ("euler", "dpmpp_2m", "ddim"):
        r = _request(scheduler=scheduler)
        ours = engine.render(r)
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        theirs = pipe(height=r.height, width=r.width, **_pipeline_kwargs(r)).images[0]
        assert np.abs(ours - theirs).max() <= TOLERANCE, scheduler
    # SD-Turbo is an SD 2.1 network run for one step without guidance, its schedule ending on "trailing".
    turbo = {**pipe.scheduler.config, "timestep_spacing": "trailing"}
    pipe.scheduler = make_scheduler("euler_a", turbo)
    r = _request(scheduler="euler_a", steps=1, guidance=0.0, negative_prompt="")
    ours = engine.render(r)
    pipe.scheduler = make_scheduler("euler_a", turbo)
    theirs = pipe(height=r.height, width=r.width, **_pipeline_kwargs(r)).images[0]
    assert np.abs(ours - theirs).max() <= TOLERANCE
    pipe.scheduler = make_scheduler("euler", {**turbo, "timestep_spacing": "leading"})
    # The prediction type matters: read as ε, the same UNet output makes another picture.
    v_image = engine.render(_request())
    pipe.scheduler = make_scheduler("euler", {**pipe.scheduler.config, "prediction_type": "epsilon"})
    epsilon = pipe(height=64, width=64, **_pipeline_kwargs(_request())).images[0]
    assert np.abs(v_image - epsilon).max() > 100 * TOLERANCE


def test_lcm_with_guidance_embedding_equals_pipeline() -> None:
    """LCM: the guidance scale enters the UNet as `timestep_cond`, one UNet pass a step and no CFG."""
    pipe = build_tiny_lcm()
    engine = _engine(pipe)
    calls: list[int] = []
    forward = pipe.unet.forward

    def counting(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        assert kwargs.get("timestep_cond") is not None
        return forward(sample, *args, **kwargs)

    pipe.unet.forward = counting
    r = _request(scheduler="lcm", steps=4, guidance=8.0, negative_prompt="")
    ours = engine.render(r)
    assert calls == [1] * 4  # batch 1 at every step: no unconditional pass
    theirs = pipe(
        prompt=r.prompt,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        height=r.height,
        width=r.width,
        generator=torch.Generator("cpu").manual_seed(r.seed),
        output_type="np",
    ).images[0]
    assert np.abs(ours - theirs).max() <= TOLERANCE
    # The embedding carries the scale: another guidance is another picture.
    assert np.abs(engine.render(r.replace(guidance=2.0)) - ours).max() > 100 * TOLERANCE
