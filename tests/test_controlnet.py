"""Control layers: ControlNets in the engine's loop equal diffusers' ControlNet pipelines; loading, discovery
and safety as for checkpoints; the preprocessors make the maps their ControlNets expect."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from safetensors.torch import save_file
from tiny_models import build_tiny_controlnet, build_tiny_sd, build_tiny_sdxl

from backend.control_images import control_map
from backend.controlnets import discover_controlnets
from backend.diffusers_engine import DiffusersEngine
from backend.errors import ModelError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.request import Control, Request
from backend.schedulers import make_scheduler

TOLERANCE = 1e-4
RNG = np.random.default_rng(3)
IMAGE_A = Picture(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
IMAGE_B = Picture(RNG.integers(0, 256, (48, 40, 3), dtype=np.uint8))  # resized to the request like diffusers


@pytest.fixture(scope="module")
def sd_nets(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny SD ControlNets saved as diffusers folders."""
    unet = build_tiny_sd().unet
    folders = []
    for seed in (1, 2):
        folder = tmp_path_factory.mktemp("controlnets") / f"tiny-cn-{seed}"
        build_tiny_controlnet(unet, seed).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


@pytest.fixture(scope="module")
def sdxl_nets(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny SDXL ControlNets saved as diffusers folders."""
    unet = build_tiny_sdxl().unet
    folders = []
    for seed in (1, 2):
        folder = tmp_path_factory.mktemp("controlnets") / f"tiny-xl-cn-{seed}"
        build_tiny_controlnet(unet, seed).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def _request(*controls: Control, **changes) -> Request:
    return Request(
        engine="diffusers",
        model="tiny",
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        seed=11,
        steps=4,
        guidance=6.0,
        width=64,
        height=64,
        controls=controls,
    ).replace(**changes)


def _engine(pipe) -> DiffusersEngine:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    return engine


def _pipeline_image(pipe_class, pipe, r: Request) -> np.ndarray:
    nets = [ControlNetModel.from_pretrained(c.model) for c in r.controls]
    net = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
    control_pipe = pipe_class(**pipe.components, controlnet=net)
    control_pipe.set_progress_bar_config(disable=True)
    control_pipe.scheduler = make_scheduler(r.scheduler, pipe.scheduler.config)
    one = len(nets) == 1
    images = [c.image.to_pil() for c in r.controls]
    return control_pipe(
        prompt=r.prompt,
        negative_prompt=r.negative_prompt or None,
        image=images[0] if one else images,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        controlnet_conditioning_scale=r.controls[0].strength if one else [c.strength for c in r.controls],
        control_guidance_start=r.controls[0].start if one else [c.start for c in r.controls],
        control_guidance_end=r.controls[0].end if one else [c.end for c in r.controls],
        generator=torch.Generator("cpu").manual_seed(r.seed),
        output_type="np",
        height=r.height,
        width=r.width,
    ).images[0]


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_one_controlnet_equals_the_pipeline(sd_nets, scheduler) -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    r = _request(Control(str(sd_nets[0]), "raw", IMAGE_A, 0.8), scheduler=scheduler)
    ours = engine.render(r)
    theirs = _pipeline_image(StableDiffusionControlNetPipeline, pipe, r)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    # The control steers: without it the image is clearly another.
    assert np.abs(ours - engine.render(r.replace(controls=()))).max() > 100 * TOLERANCE


def test_two_controlnets_with_their_own_strength_and_steps_equal_the_pipeline(sd_nets) -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    r = _request(
        Control(str(sd_nets[0]), "raw", IMAGE_A, 0.7, 0.0, 0.5),
        Control(str(sd_nets[1]), "raw", IMAGE_B, 1.3, 0.25, 1.0),
        steps=5,
    )
    ours = engine.render(r)
    theirs = _pipeline_image(StableDiffusionControlNetPipeline, pipe, r)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    only_first = engine.render(r.replace(controls=r.controls[:1]))
    assert np.abs(ours - only_first).max() > 100 * TOLERANCE


def test_sdxl_controlnets_equal_the_pipeline(sdxl_nets) -> None:
    pipe = build_tiny_sdxl()
    engine = _engine(pipe)
    one = _request(Control(str(sdxl_nets[0]), "raw", IMAGE_A, 0.9))
    two = _request(
        Control(str(sdxl_nets[0]), "raw", IMAGE_A, 0.9, 0.0, 0.75),
        Control(str(sdxl_nets[1]), "raw", IMAGE_B, 0.6, 0.25, 1.0),
    )
    for r in (one, two):
        ours = engine.render(r)
        theirs = _pipeline_image(StableDiffusionXLControlNetPipeline, pipe, r)
        assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(engine.render(one) - engine.render(one.replace(controls=()))).max() > 100 * TOLERANCE


def test_img2img_and_inpainting_with_a_control_equal_the_pipelines(sd_nets) -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    init = Picture(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    hole = np.zeros((64, 64), np.uint8)
    hole[16:48, 16:48] = 255
    r = _request(Control(str(sd_nets[0]), "raw", IMAGE_A, 0.8), init_image=init, strength=0.6, steps=5)
    for pipe_class, extra in (
        (StableDiffusionControlNetImg2ImgPipeline, {}),
        (StableDiffusionControlNetInpaintPipeline, {"mask_image": Picture(hole).to_pil()}),
    ):
        x = r.replace(mask=Picture(hole)) if extra else r
        ours = engine.render(x)
        control_pipe = pipe_class(**pipe.components, controlnet=ControlNetModel.from_pretrained(sd_nets[0]))
        control_pipe.set_progress_bar_config(disable=True)
        control_pipe.scheduler = make_scheduler(x.scheduler, pipe.scheduler.config)
        theirs = control_pipe(
            prompt=x.prompt,
            negative_prompt=x.negative_prompt,
            image=init.to_pil(),
            control_image=IMAGE_A.to_pil(),
            strength=x.strength,
            num_inference_steps=x.steps,
            guidance_scale=x.guidance,
            controlnet_conditioning_scale=0.8,
            generator=torch.Generator("cpu").manual_seed(x.seed),
            output_type="np",
            height=64,
            width=64,
            **extra,
        ).images[0]
        repainted = hole >= 128 if extra else np.ones((64, 64), bool)
        assert np.abs(ours - theirs)[repainted].max() <= TOLERANCE
        if extra:  # outside the hole the engine keeps the person's pixels exactly (the pipeline re-decodes)
            np.testing.assert_array_equal(np.round(ours[~repainted] * 255), init.pixels[~repainted])


def test_a_single_safetensors_file_gives_the_folder_image(sd_nets, tmp_path) -> None:
    net = ControlNetModel.from_pretrained(sd_nets[0])
    single = tmp_path / "models" / "ControlNet" / "control_tiny_canny.safetensors"
    single.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(single))
    engine = _engine(build_tiny_sd())
    folder_image = engine.render(_request(Control(str(sd_nets[0]), "canny", IMAGE_A)))
    # Found by name in an A1111 install added as a model folder, built from the loaded model's UNet config.
    engine.model_folders = (str(tmp_path),)
    file_image = engine.render(_request(Control("control_tiny_canny", "canny", IMAGE_A)))
    np.testing.assert_array_equal(file_image, folder_image)


def test_controls_keep_previews_cancel_and_the_loaded_networks(sd_nets) -> None:
    engine = _engine(build_tiny_sd())
    r = _request(Control(str(sd_nets[0]), "scribble", IMAGE_A))
    events = list(engine.generate(r, threading.Event()))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 4 and all(e.preview is not None for e in steps)
    done = events[-1]
    assert isinstance(done, Done)
    assert (
        done.extras["controls"][0]["path"] == str(sd_nets[0])
        and len(done.extras["controls"][0]["sha256"]) == 64
    )
    net = engine.adapters.controlnets[str(sd_nets[0])].net
    cancel = threading.Event()
    run = engine.generate(
        r.replace(controls=(r.controls[0].__class__(str(sd_nets[0]), "raw", IMAGE_A, 0.5),)), cancel
    )
    next(run)
    cancel.set()
    assert not any(isinstance(e, Done) for e in run)  # a cancelled run decodes nothing
    assert engine.adapters.controlnets[str(sd_nets[0])].net is net  # a strength change does not reload it
    list(engine.generate(r.replace(controls=()), threading.Event()))
    assert engine.adapters.controlnets == {}  # a request without controls frees them


def test_tiling_wraps_the_controlnet_too(sd_nets) -> None:
    engine = _engine(build_tiny_sd())
    r = _request(Control(str(sd_nets[0]), "raw", IMAGE_A), tiling=True)
    run = engine.generate(r, threading.Event())
    next(run)
    net = engine.adapters.controlnets[str(sd_nets[0])].net
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)]
    assert convs and all(c.padding_mode == "circular" for c in convs)
    run.close()
    assert all(c.padding_mode == "zeros" for c in convs)


def test_a_controlnet_of_another_family_gives_one_line(sd_nets, sdxl_nets, tmp_path) -> None:
    sd = _engine(build_tiny_sd())
    with pytest.raises(
        ModelError, match="is made for text width 80 models, but the loaded model is text width 32"
    ) as e:
        sd.render(_request(Control(str(sdxl_nets[0]), "raw", IMAGE_A)))
    assert "\n" not in str(e.value)
    single = tmp_path / "xl.safetensors"
    net = ControlNetModel.from_pretrained(sdxl_nets[0])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(single))
    with pytest.raises(ModelError, match="made for text width 80 models"):
        sd.render(_request(Control(str(single), "raw", IMAGE_A)))
    xl = _engine(build_tiny_sdxl())
    with pytest.raises(
        ModelError, match="made for text width 32 models, but the loaded model is text width 80"
    ):
        xl.render(_request(Control(str(sd_nets[0]), "raw", IMAGE_A)))


def test_pickles_and_files_that_are_not_controlnets_are_refused(tmp_path) -> None:
    engine = _engine(build_tiny_sd())
    pickle_file = tmp_path / "control_v11p_sd15_canny.pth"
    torch.save({"input_hint_block.0.weight": torch.zeros(1)}, pickle_file)
    with pytest.raises(ModelError, match="is a pickle file .* can run code"):
        engine.render(_request(Control(str(pickle_file), "canny", IMAGE_A)))
    lora = tmp_path / "not_a_controlnet.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(ModelError, match="is not a ControlNet"):
        engine.render(_request(Control(str(lora), "canny", IMAGE_A)))
    with pytest.raises(ModelError, match="no such file or folder"):
        engine.render(_request(Control(str(tmp_path / "missing.safetensors"), "canny", IMAGE_A)))


def test_discovery_finds_a1111_comfyui_and_hub_controlnets(sd_nets, tmp_path) -> None:
    a1111 = tmp_path / "webui" / "models" / "ControlNet"
    comfy = tmp_path / "ComfyUI" / "models" / "controlnet" / "sd15"
    a1111.mkdir(parents=True)
    comfy.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(a1111 / "control_v11p_sd15_canny.safetensors"))
    (a1111 / "control_v11p_sd15_scribble.pth").write_bytes(b"x")
    save_file({"x": torch.zeros(1)}, str(comfy / "lineart.safetensors"))
    checkpoints = tmp_path / "webui" / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(checkpoints / "dreamshaper.safetensors"))  # not a ControlNet
    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--tiny-cn" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((sd_nets[0] / "config.json").read_text())
    (hub / "models--someone--tiny-cn" / "refs").mkdir()
    (hub / "models--someone--tiny-cn" / "refs" / "main").write_text("a" * 40)
    (hub / "models--someone--tiny-cn" / "blobs").mkdir()
    found = discover_controlnets(
        (str(tmp_path / "webui"), str(tmp_path / "ComfyUI"), str(sd_nets[0].parent)), hub_cache=hub
    )
    by_name = {info.name: info for info in found}
    assert set(by_name) == {
        "control_v11p_sd15_canny",
        "control_v11p_sd15_scribble",
        "lineart",
        sd_nets[0].name,
        "someone/tiny-cn",
    }
    assert by_name["control_v11p_sd15_scribble"].pickle and by_name["someone/tiny-cn"].kind == "hub"


# --- preprocessors -----------------------------------------------------------------------------------------


def _drawing() -> Picture:
    """Black strokes on white, as a person draws on a sketch layer: a square outline and a diagonal."""
    pixels = np.full((64, 64, 3), 255, np.uint8)
    pixels[16:18, 16:48] = pixels[46:48, 16:48] = 0
    pixels[16:48, 16:18] = pixels[16:48, 46:48] = 0
    for i in range(8, 56):
        pixels[i, i] = 0
    return Picture(pixels)


@pytest.mark.parametrize("kind", ["canny", "scribble", "lineart"])
def test_preprocessors_turn_dark_strokes_into_white_lines_on_black(kind) -> None:
    out = np.asarray(control_map(kind, _drawing(), 64, 64))
    assert out.shape == (64, 64, 3) and (out[..., 0] == out[..., 1]).all()
    gray = out[..., 0].astype(int)
    assert gray[2:10, 30:40].max() == 0  # blank paper stays black
    assert gray[15:20, 30].max() > 100  # near the top stroke: a line
    assert gray[30, 30].max() < 50 or kind != "canny"  # inside the square: nothing to detect for canny


def test_raw_depth_and_pose_maps_pass_unchanged() -> None:
    for kind in ("raw", "depth", "pose"):
        assert np.array_equal(np.asarray(control_map(kind, IMAGE_B, 64, 64)), IMAGE_B.pixels)
    # Computed maps are made at the request's size.
    assert control_map("canny", IMAGE_B, 64, 64).size == (64, 64)
