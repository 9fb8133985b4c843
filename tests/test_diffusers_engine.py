"""The diffusers engine's protocol: step events with x0 previews, cancellation, inpainting, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from tiny_models import build_tiny_sd

import backend.diffusers_engine as engine_module
from backend.diffusers_engine import DiffusersEngine
from backend.engine import Engine
from backend.engines import Engines
from backend.errors import ModelError, RequestError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.models import model_hash
from backend.previews import latent_to_rgb, to_frame
from backend.sampling import estimate_x0
from backend.schedulers import make_scheduler


def _run(engine, request, cancel=None):
    return list(engine.generate(request, cancel or threading.Event()))


def test_step_events_then_done(tiny_engine, tiny_request) -> None:
    assert isinstance(tiny_engine, Engine)
    events = _run(tiny_engine, tiny_request)
    steps, done = events[:-1], events[-1]
    assert [e.step for e in steps] == [1, 2, 3] and all(e.total == 3 for e in steps)
    assert all(isinstance(e, StepEvent) and e.request_id == tiny_request.request_id for e in steps)
    assert [e.elapsed_s for e in steps] == sorted(e.elapsed_s for e in steps)
    for e in steps:
        assert e.preview is not None and e.preview.shape == (64, 64, 3) and e.preview.dtype == np.uint8
    # previews follow the image forming: they differ from step to step
    assert not np.array_equal(steps[0].preview, steps[-1].preview)
    assert isinstance(done, Done) and done.image.shape == (64, 64, 3) and done.image.dtype == np.uint8
    assert done.request == tiny_request
    assert done.extras["model"] == "tiny" and done.extras["model_family"] == "sd1"
    assert done.extras["device"] == "cpu"


def test_preview_none_gives_no_frames(tiny_engine, tiny_request) -> None:
    events = _run(tiny_engine, tiny_request.replace(preview="none"))
    assert all(e.preview is None for e in events[:-1])
    assert isinstance(events[-1], Done)


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_last_preview_is_latent_rgb_of_final_latents(tiny_engine, tiny_request, scheduler) -> None:
    """At the last step x0 is the final latents: the preview is their latent-RGB image.

    Euler reports x0; DPM++ 2M does not, so its preview checks the engine's own x0 from the noise prediction.
    """
    captured = {}
    pipe = tiny_engine.model.pipe
    original = pipe.vae.decode

    def spy(latents, *args, **kwargs):
        captured["latents"] = latents * pipe.vae.config.scaling_factor
        return original(latents, *args, **kwargs)

    pipe.vae.decode = spy
    try:
        events = _run(tiny_engine, tiny_request.replace(scheduler=scheduler))
    finally:
        pipe.vae.decode = original
    assert not captured["latents"].requires_grad  # the loop builds no autograd graph across steps
    expected = to_frame(latent_to_rgb(captured["latents"], "sd1"), 64, 64).numpy()
    assert np.abs(events[-2].preview.astype(int) - expected.astype(int)).max() <= 1


def test_x0_fallback_matches_schedulers_own_estimate() -> None:
    """The x0 computed for schedulers that do not report it equals the one Euler and DDIM report."""
    torch.manual_seed(0)
    sample, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    for prediction in ("epsilon", "v_prediction"):
        euler = EulerDiscreteScheduler(**config, prediction_type=prediction)
        euler.set_timesteps(10)
        t = euler.timesteps[3]
        euler._init_step_index(t)
        sigma = float(euler.sigmas[euler.step_index])
        reported = euler.step(eps, t, sample).pred_original_sample
        torch.testing.assert_close(estimate_x0(sample, eps, prediction, sigma=sigma), reported)
        ddim = DDIMScheduler(**config, prediction_type=prediction, clip_sample=False)
        ddim.set_timesteps(10)
        t = ddim.timesteps[3]
        reported = ddim.step(eps, t, sample).pred_original_sample
        alpha_bar = ddim.alphas_cumprod[int(t)]
        torch.testing.assert_close(estimate_x0(sample, eps, prediction, alpha_bar=alpha_bar), reported)


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler"])
def test_every_preview_is_the_clean_image_estimate_of_its_step(
    tiny_engine, tiny_request, scheduler, monkeypatch
) -> None:
    """Each step's frame is x0 = (x_t − √(1−ᾱ)·ε) / √ᾱ of that step, mapped to RGB: not the noisy latents.

    DPM++ 2M reports no x0, so the engine computes it; Euler reports one. Either way the frame must equal
    the estimate written out here from the scheduler's own inputs (ε, x_t and ᾱ_t of every step).
    """
    pipe = tiny_engine.model.pipe
    r = tiny_request.replace(scheduler=scheduler, steps=4)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def spying_make(*args, **kwargs):
        made = make_scheduler(*args, **kwargs)
        step = made.step

        def spy(model_output, timestep, sample, *a, **k):
            seen.append((model_output.clone(), timestep, sample.clone()))
            return step(model_output, timestep, sample, *a, **k)

        made.step = spy
        return made

    monkeypatch.setattr(engine_module, "make_scheduler", spying_make)
    events = _run(tiny_engine, r)
    frames = [e.preview for e in events if isinstance(e, StepEvent)]
    assert len(frames) == len(seen) == 4
    alphas = pipe.scheduler.alphas_cumprod
    for frame, (eps, t, x_t) in zip(frames, seen, strict=True):
        if scheduler == "euler":  # Euler's x_t is scaled by sigma: x0 = x_t − σ·ε
            sigmas = ((1 - alphas) / alphas) ** 0.5
            sigma = float(np.interp(float(t), np.arange(len(sigmas)), sigmas.numpy()))
            x0 = x_t - sigma * eps
        else:
            a = alphas[int(t)]
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        expected = to_frame(latent_to_rgb(x0, "sd1"), 64, 64).numpy()
        assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
        noisy = to_frame(latent_to_rgb(x_t, "sd1"), 64, 64).numpy()
        assert np.abs(frame.astype(int) - noisy.astype(int)).max() > 1  # not a frame of the noisy latents


def test_cancel_stops_within_a_step_and_yields_no_done(tiny_engine, tiny_request) -> None:
    cancel = threading.Event()
    seen = []
    for event in tiny_engine.generate(tiny_request.replace(steps=6), cancel):
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 2:
            cancel.set()
    assert [type(e) for e in seen] == [StepEvent, StepEvent]


def test_cancel_after_last_step_skips_the_decode(tiny_engine, tiny_request) -> None:
    pipe = tiny_engine.model.pipe
    calls = []
    original = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: calls.append(1) or original(*a, **k)
    cancel = threading.Event()
    try:
        seen = []
        for event in tiny_engine.generate(tiny_request, cancel):
            seen.append(event)
            if isinstance(event, StepEvent) and event.step == event.total:
                cancel.set()
    finally:
        pipe.vae.decode = original
    assert not any(isinstance(e, Done) for e in seen) and calls == []


def test_same_request_same_pixels(tiny_engine, tiny_request) -> None:
    a = _run(tiny_engine, tiny_request)[-1].image
    b = _run(tiny_engine, tiny_request.replace())[-1].image
    c = _run(tiny_engine, tiny_request.replace(seed=8))[-1].image
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _init_and_mask() -> tuple[Picture, Picture]:
    init = Picture(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 24:56] = 255
    return init, Picture(mask)


@pytest.mark.parametrize("nine_channels", [False, True])
def test_inpainting_repaints_only_the_mask(tiny_request, nine_channels) -> None:
    engine = DiffusersEngine(device="cpu")
    engine.use_pipeline(build_tiny_sd(inpaint=nine_channels), "tiny")
    assert engine.model.inpaint_unet is nine_channels
    init, mask = _init_and_mask()
    out = _run(engine, tiny_request.replace(init_image=init, mask=mask, strength=1.0))[-1].image
    keep = mask.pixels == 0
    np.testing.assert_array_equal(out[keep], init.pixels[keep])
    assert np.abs(out[~keep].astype(int) - init.pixels[~keep]).mean() > 10


def test_inpainting_reimposes_known_latents(tiny_engine, tiny_request) -> None:
    """With an ordinary UNet the known region's latents are the init's: the decode sees them unchanged."""
    init, mask = _init_and_mask()
    pipe = tiny_engine.model.pipe
    seen = {}
    original = pipe.vae.decode
    pipe.vae.decode = lambda latents, *a, **k: (
        seen.setdefault("z", latents) is None or original(latents, *a, **k)
    )
    try:
        _run(tiny_engine, tiny_request.replace(init_image=init, mask=mask, strength=0.7))
    finally:
        pipe.vae.decode = original
    gen = torch.Generator("cpu").manual_seed(tiny_request.seed)
    image = pipe.image_processor.preprocess(init.to_pil())
    init_latents = pipe.vae.encode(image).latent_dist.sample(gen)  # the engine's first draw
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 2:6, 3:7] = False
    torch.testing.assert_close(seen["z"][keep.expand(1, 4, 8, 8)], init_latents[keep.expand(1, 4, 8, 8)])


def test_bad_requests_raise_request_errors(tiny_engine, tiny_request) -> None:
    with pytest.raises(RequestError, match="unknown scheduler"):
        _run(tiny_engine, tiny_request.replace(scheduler="warp"))
    init, _ = _init_and_mask()
    with pytest.raises(RequestError, match="no step"):
        _run(tiny_engine, tiny_request.replace(init_image=init, strength=0.1))
    with pytest.raises(RequestError, match="TAESD"):
        _run(tiny_engine, tiny_request.replace(preview="taesd"))
    assert isinstance(_run(tiny_engine, tiny_request)[-1], Done)  # still usable


def test_out_of_memory_becomes_a_clear_error_and_engine_recovers(tiny_engine, tiny_request) -> None:
    unet = tiny_engine.model.pipe.unet
    original = unet.forward

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    unet.forward = exhausted
    try:
        with pytest.raises(ModelError, match="out of memory.*lower the size or steps"):
            _run(tiny_engine, tiny_request)
    finally:
        unet.forward = original
    assert isinstance(_run(tiny_engine, tiny_request)[-1], Done)


def test_dispatcher_loads_a_folder_and_reports_its_hash(tiny_sd_folder, tiny_request) -> None:
    engines = Engines(device="cpu")
    r = tiny_request.replace(model=str(tiny_sd_folder))
    done = list(engines.generate(r, threading.Event()))[-1]
    assert done.extras["model"] == str(tiny_sd_folder)
    assert done.extras["model_hash"] == model_hash(tiny_sd_folder) and len(done.extras["model_hash"]) == 64
    assert done.extras["model_family"] == "sd1"
    with pytest.raises(ModelError, match="no such file"):
        list(engines.generate(r.replace(model=str(tiny_sd_folder / "missing")), threading.Event()))
    again = list(engines.generate(r, threading.Event()))[-1]  # the engine works after a failed load
    np.testing.assert_array_equal(again.image, done.image)


def test_taesd_previews_from_a_local_folder(tmp_path, tiny_request) -> None:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    tiny_taesd = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    tiny_taesd.save_pretrained(tmp_path / "taesd")
    engine = DiffusersEngine(device="cpu", taesd=str(tmp_path))  # finds the taesd/ subfolder for SD1
    engine.use_pipeline(build_tiny_sd(), "tiny")
    by_taesd = _run(engine, tiny_request.replace(preview="taesd"))
    by_factors = _run(engine, tiny_request.replace(preview="latent_rgb"))
    assert by_taesd[0].preview.shape == (64, 64, 3)
    assert not np.array_equal(by_taesd[0].preview, by_factors[0].preview)
    np.testing.assert_array_equal(by_taesd[-1].image, by_factors[-1].image)  # previews never touch the result
    broken = DiffusersEngine(device="cpu", taesd=str(tmp_path / "nothing-here"))
    broken.use_pipeline(build_tiny_sd(), "tiny")
    with pytest.raises(ModelError, match="not a TAESD"):
        _run(broken, tiny_request.replace(preview="taesd"))
    auto = _run(broken, tiny_request)  # "auto" falls back to latent-RGB frames
    np.testing.assert_array_equal(auto[0].preview, by_factors[0].preview)
