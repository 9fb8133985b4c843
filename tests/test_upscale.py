"""Upscaling a pick: ESRGAN-family files read by spandrel (without torchvision), tiled super-resolution,
Lanczos without a model, and the tiled img2img refine whose overlapping tiles leave no seam."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_models import build_tiny_sd

from backend.engines import Engines
from backend.errors import ModelError, RequestError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.request import Request
from backend.sr_models import load_upscaler, super_resolve
from backend.tiles import Blender, tile_boxes
from backend.upscale import run_upscale
from backend.upscale_spec import Upscale
from studio.a1111 import request_from_a1111, to_a1111
from studio.recipe import recipe_from_json, recipe_to_json


def esrgan_state(scale: int, seed: int = 0, nf: int = 8, gc: int = 32) -> dict[str, torch.Tensor]:
    """A random-weight Real-ESRGAN (xinntao RRDBNet keys, one block, 8 filters) for ×2 or ×4."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, bias: float = 0.0) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, 3, 3, generator=g) * 0.1
        state[f"{name}.bias"] = torch.full((out,), bias)

    conv("conv_first", nf, 3)
    for rdb in (1, 2, 3):
        for c in range(1, 6):
            conv(f"body.0.rdb{rdb}.conv{c}", gc if c < 5 else nf, nf + (c - 1) * gc)
    conv("conv_body", nf, nf)
    for up in range({2: 1, 4: 2}[scale]):
        conv(f"conv_up{up + 1}", nf, nf)
    conv("conv_hr", nf, nf)
    conv("conv_last", 3, nf, bias=0.5)  # mid-grey plus the random network's detail
    return state


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory) -> dict[str, Path]:
    """Tiny ESRGAN files: ×2 and ×4 safetensors, and a ×2 pickle as Real-ESRGAN ships (params_ema)."""
    folder = tmp_path_factory.mktemp("upscalers")
    files = {"x2": folder / "tiny-x2.safetensors", "x4": folder / "tiny-x4.safetensors"}
    save_file(esrgan_state(2), str(files["x2"]))
    save_file(esrgan_state(4, seed=1), str(files["x4"]))
    files["pth"] = folder / "tiny-x2.pth"
    torch.save({"params_ema": esrgan_state(2)}, files["pth"])
    return files


def _whole(upscaler, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return upscaler.model(x)[0].permute(1, 2, 0).numpy()


def _finish(run):
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


# --- loading ------------------------------------------------------------------------------------------


def test_esrgan_files_load_through_spandrel_without_torchvision(upscalers) -> None:
    x2 = load_upscaler(upscalers["x2"], torch.device("cpu"))
    x4 = load_upscaler(upscalers["x4"], torch.device("cpu"))
    assert (x2.scale, x2.architecture, x4.scale) == (2, "ESRGAN", 4)
    assert x2.extras()["sha256"] != x4.extras()["sha256"] and len(x2.sha256) == 64
    # spandrel imported with torchvision stand-ins that are gone again: no library thinks it is installed
    assert "spandrel" in sys.modules and not any(m.startswith("torchvision") for m in sys.modules)
    from transformers.utils import is_torchvision_available

    assert not is_torchvision_available()
    from spandrel.architectures.LaMa.__arch import LaMa as lama  # noqa: N813 - spandrel's name

    with pytest.raises(ModelError, match="needs torchvision"):
        lama.rotate(torch.zeros(1, 3, 4, 4), 0.0)


def test_pickles_follow_the_refusal_rule(upscalers, tmp_path) -> None:
    with pytest.raises(ModelError, match="pickle file"):
        load_upscaler(upscalers["pth"], torch.device("cpu"))
    assert load_upscaler(upscalers["pth"], torch.device("cpu"), allow_pickle=True).scale == 2
    hostile = tmp_path / "hostile.pth"
    torch.save({"params_ema": esrgan_state(2), "payload": Path("/")}, hostile)  # not a tensor: refused
    with pytest.raises(ModelError, match="weights-only"):
        load_upscaler(hostile, torch.device("cpu"), allow_pickle=True)


def test_files_that_are_not_upscalers_say_so(tmp_path) -> None:
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(other))
    with pytest.raises(ModelError, match="not a model architecture spandrel knows"):
        load_upscaler(other, torch.device("cpu"))
    with pytest.raises(ModelError, match="no such file"):
        load_upscaler(tmp_path / "missing.pth", torch.device("cpu"))


# --- super-resolution in tiles ----------------------------------------------------------------------------


def test_tiled_super_resolution_matches_the_whole_image(upscalers) -> None:
    upscaler = load_upscaler(upscalers["x2"], torch.device("cpu"))
    image = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)  # 2×2 tiles of 256
    tiled = _finish(super_resolve(upscaler, image))
    whole = _whole(upscaler, image)
    assert tiled.shape == whole.shape == (600, 840, 3)
    difference = np.abs(tiled - whole)
    assert difference.mean() < 1e-3 and (difference < 1 / 255).mean() > 0.98
    assert whole.std() > 0.02  # the tiny model does something to compare


def test_tiles_cover_the_image_overlap_and_blend_to_one() -> None:
    boxes = tile_boxes(1000, 600, 512, 64, align=8)
    covered = np.zeros((600, 1000), int)
    for b in boxes:
        assert b.w % 8 == 0 and b.h % 8 == 0 and b.x + b.w <= 1000 and b.y + b.h <= 600
        covered[b.y : b.y + b.h, b.x : b.x + b.w] += 1
    assert covered.min() >= 1
    blender = Blender(1000, 600, 64)
    for b in boxes:
        blender.add(b, np.full((b.h, b.w, 3), 77.0))
    np.testing.assert_allclose(blender.result(), 77.0, atol=1e-4)


# --- the refine leaves no seam ------------------------------------------------------------------------


class DriftingRefine:
    """An img2img engine that keeps its init image but shifts its colour by an amount of its own, as a real
    refine drifts each tile's colours a little differently (the engine is not what is under test here)."""

    def generate(self, request: Request, cancel: threading.Event):
        assert request.init_image is not None and request.upscale is None
        yield StepEvent(request.request_id, 1, 1, None, 0.0)
        seed = int(request.init_image.digest[:8], 16)
        drift = np.random.default_rng(seed).uniform(-24, 24, 3)
        image = np.clip(request.init_image.pixels + drift, 0, 255).round().astype(np.uint8)
        yield Done(request.request_id, image, request, {"model": "drift"})


def _no_model(ref: str):
    raise AssertionError("no upscale model in this test")


def _seam_ratios(image: np.ndarray, positions: list[int], axis: int) -> list[float]:
    """Difference across each position over the mean difference of interior neighbours, as the tiling
    test measures its wrap-around seam."""
    img = np.moveaxis(image.astype(float), axis, 0)
    steps = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))  # steps[i]: between rows i and i + 1
    interior = steps.mean()
    return [steps[p - 1] / interior for p in positions]


def test_overlapping_refine_tiles_leave_no_seam_where_naive_tiles_do() -> None:
    # A photo-like source: smooth shapes with some texture, 192² upscaled ×2 with Lanczos to 384².
    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize(
        (192, 192), Image.BICUBIC
    )
    source = np.clip(np.asarray(small, float) + rng.normal(0, 6, (192, 192, 3)), 0, 255).astype(np.uint8)
    base = Request(seed=1, steps=4, width=384, height=384, init_image=Picture(source), strength=0.3)

    def refine(overlap: int) -> np.ndarray:
        request = base.replace(upscale=Upscale(factor=2, tile=128, overlap=overlap))
        return list(run_upscale(DriftingRefine(), _no_model, request, threading.Event()))[-1].image

    lanczos = np.asarray(Image.fromarray(source).resize((384, 384), Image.LANCZOS), float)
    naive = refine(0)  # tiles side by side: 128 and 256 are tile edges
    assert max(_seam_ratios(naive, [128, 256], axis=1) + _seam_ratios(naive, [128, 256], axis=0)) > 2.0
    blended = refine(48)
    every = list(range(1, 384))
    for axis in (0, 1):
        ratios = np.array(_seam_ratios(blended, every, axis))
        assert ratios.max() < 1.5  # no step stands out, as the tiling test measures its wrap-around
        # and no step is larger than the unrefined image has at the same place (naive tiles: 3×)
        assert (ratios / np.array(_seam_ratios(lanczos, every, axis))).max() < 1.15
    assert np.abs(blended - lanczos).mean() > 3  # the refine did act everywhere


# --- upscale requests through the engines -------------------------------------------------------------


@pytest.fixture
def engines():
    engines = Engines(device="cpu")
    engines.get("diffusers").use_pipeline(build_tiny_sd(), "tiny")
    return engines


def _upscale_request(source: Picture, factor: int, **changes) -> Request:
    changes.setdefault("strength", 0.5)
    return Request(
        engine="diffusers",
        model="tiny",
        prompt="a red fox",
        seed=3,
        steps=4,
        width=source.width * factor,
        height=source.height * factor,
        init_image=source,
        **changes,
    )


SOURCE = Picture(np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_upscale_with_a_model_then_refine_on_the_diffusers_engine(engines, upscalers) -> None:
    r = _upscale_request(SOURCE, 2, upscale=Upscale(2, str(upscalers["x4"]), tile=64, overlap=16))
    events = list(engines.generate(r, threading.Event()))
    done = events[-1]
    assert isinstance(done, Done) and done.image.shape == (96, 128, 3) and done.request == r
    steps = [e for e in events if isinstance(e, StepEvent)]
    tiles = tile_boxes(128, 96, 64, 16, align=8)
    assert len(tiles) == 6 and steps[-1].total == 1 + 6 * 2  # one ×4 tile, then six tiles of 2 steps
    assert [e.step for e in steps] == list(range(1, steps[-1].total + 1))
    assert all(e.preview.shape == (96, 128, 3) for e in steps)
    assert done.extras["upscaler"]["sha256"] == load_upscaler(upscalers["x4"], torch.device("cpu")).sha256
    assert done.extras["model"] == "tiny" and done.extras["upscale_tile"] == 64
    # Each tile is the engine's own img2img of the ×4-then-Lanczos image; the result is their blend.
    sr = _finish(super_resolve(engines.upscaler(str(upscalers["x4"])), SOURCE.pixels))
    big = np.asarray(
        Image.fromarray(np.clip(sr * 255 + 0.5, 0, 255).astype(np.uint8)).resize((128, 96), Image.LANCZOS)
    )
    blender = Blender(128, 96, 16)
    for box in tiles:
        crop = Picture(big[box.y : box.y + box.h, box.x : box.x + box.w])
        tile = r.replace(upscale=None, init_image=crop, width=box.w, height=box.h)
        blender.add(box, [e for e in engines.generate(tile, threading.Event())][-1].image)
    expected = np.clip(blender.result() + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(done.image, expected)


def test_lanczos_without_a_model_and_strength_zero_skips_the_refine(engines) -> None:
    r = _upscale_request(SOURCE, 3, strength=0.0, upscale=Upscale(3))
    done = list(engines.generate(r, threading.Event()))[-1]
    lanczos = np.asarray(SOURCE.to_pil().resize((192, 144), Image.LANCZOS))
    np.testing.assert_array_equal(done.image, lanczos)
    assert done.extras["upscaler"] == {"name": "Lanczos"}
    refined = list(
        engines.generate(r.replace(strength=0.4, upscale=Upscale(3, tile=96, overlap=16)), threading.Event())
    )
    assert np.abs(refined[-1].image.astype(float) - lanczos).mean() > 1


def test_cancelling_an_upscale_gives_no_done(engines) -> None:
    cancel = threading.Event()
    seen = []
    r = _upscale_request(SOURCE, 2, upscale=Upscale(2, tile=64, overlap=16))
    for event in engines.generate(r, cancel):
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 3:
            cancel.set()
    assert seen and not any(isinstance(e, Done) for e in seen)


def test_upscale_recipes_read_back_equal(upscalers) -> None:
    r = _upscale_request(SOURCE, 4, upscale=Upscale(4, str(upscalers["x4"]), tile=512, overlap=32))
    assert recipe_from_json(recipe_to_json(r)).request == r
    text = to_a1111(r, {})
    assert "Upscale by: 4" in text and "Upscaler: tiny-x4" in text and "SD upscale overlap: 32" in text
    assert request_from_a1111(text)[0].upscale == r.upscale
    assert request_from_a1111(to_a1111(_upscale_request(SOURCE, 2, upscale=Upscale(2))))[
        0
    ].upscale == Upscale(2)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"upscale": Upscale(5)}, "upscale by 2, 3, 4"),
        ({"width": 100}, "gives 128×96, but the request is 100×96"),
        ({"init_image": None}, "needs an image to upscale"),
        ({"mask": Picture(np.zeros((96, 128), np.uint8))}, "takes no mask"),
        ({"upscale": Upscale(2, tile=100)}, "multiple of 8"),
        ({"upscale": Upscale(2, tile=64, overlap=40)}, "under half a tile"),
        ({"strength": 0.2}, "strength 0.2 with 4 steps runs no step"),
    ],
)
def test_bad_upscales_say_what_is_wrong(changes, says) -> None:
    r = _upscale_request(SOURCE, 2, upscale=Upscale(2)).replace(**changes)
    with pytest.raises(RequestError, match=says):
        r.validate()
    big = Picture(np.zeros((4200, 64, 3), np.uint8))
    with pytest.raises(RequestError, match="limit is 8192"):
        _upscale_request(big, 2, upscale=Upscale(2)).validate()


# --- the command line -----------------------------------------------------------------------------------


def test_cli_upscales_a_pick_with_its_own_recipe(tmp_path, capsys, tiny_sd_folder, upscalers) -> None:
    from test_cli import run

    from studio.files.pngmeta import read_png_metadata

    pick = tmp_path / "pick.png"
    base = ["generate", "--model", tiny_sd_folder, "--steps", "4", "-q"]
    code, _, err = run(capsys, *base, "--width", "64", "--height", "64", "--seed", "4", "--out", pick)
    assert code == 0, err
    big = tmp_path / "big.png"
    more = [
        "--upscale",
        "2",
        "--upscaler",
        upscalers["x2"],
        "--upscale-tile",
        "64",
        "--upscale-overlap",
        "16",
    ]
    code, out, err = run(capsys, "generate", "--recipe", pick, *more, "--out", big, "-q")
    assert code == 0, err
    assert Image.open(big).size == (128, 128)
    meta = read_png_metadata(big)
    r = meta.request
    assert r.upscale == Upscale(2, str(upscalers["x2"]), 64, 16) and r.strength == 0.3 and r.seed == 4
    assert np.array_equal(r.init_image.pixels, np.asarray(Image.open(pick).convert("RGB")))
    assert meta.provenance.parents == (read_png_metadata(pick).provenance.id,)
    assert "Upscale by: 2" in meta.parameters and "Upscaler: tiny-x2" in meta.parameters
    # Its recipe re-runs the upscale, pixel for pixel.
    again = tmp_path / "again.png"
    code, _, err = run(capsys, "generate", "--recipe", big, "--out", again, "-q")
    assert code == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(big)))
    # Usage errors in one line.
    code, _, err = run(capsys, "generate", "--upscale", "2", "--out", tmp_path / "x.png")
    assert code == 2 and "--upscale needs the image to upscale" in err
    code, _, err = run(
        capsys, "generate", "--recipe", pick, "--upscale", "2", "--upscaler", tmp_path / "none.pth"
    )
    assert code == 1 and "no such file" in err
