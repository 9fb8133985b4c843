"""Outpainting: grow the image on any side, fill the new area by inpainting with the context around it,
on the diffusers engine (ordinary and 9-channel UNets) and the patch engine; the command line's --expand."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_tiny_sd

from backend.diffusers_engine import DiffusersEngine
from backend.engines import Engines
from backend.errors import RequestError
from backend.events import Done
from backend.outpaint import SEAM_BAND, Expansion, fitted, grow, outpaint_request, parse_expansion
from backend.request import Request

RNG = np.random.default_rng(8)
SOURCE = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _done(engine, request) -> Done:
    events = list(engine.generate(request, threading.Event()))
    assert isinstance(events[-1], Done)
    return events[-1]


def test_sides_as_typed() -> None:
    assert parse_expansion("right=128") == Expansion(right=128)
    assert parse_expansion("x=16, top=8") == Expansion(16, 8, 16, 0)
    assert parse_expansion("all=24") == Expansion(24, 24, 24, 24)
    for bad, says in (
        ("left=-8", "negative"),
        ("up=8", "unknown side"),
        ("right", "look like"),
        ("x=0", "at least"),
    ):
        with pytest.raises(RequestError, match=says):
            parse_expansion(bad)


def test_sizes_grow_in_multiples_of_eight() -> None:
    assert fitted(Expansion(right=20), 64, 48) == Expansion(right=24)
    assert fitted(Expansion(left=8), 60, 48) == Expansion(left=12)  # 60 + 12 = 72
    assert fitted(Expansion(top=8), 64, 45) == Expansion(top=11)
    with pytest.raises(RequestError):
        fitted(Expansion(), 64, 48)


def test_grown_image_keeps_the_old_pixels_and_masks_the_new_area_and_the_seam() -> None:
    filled, mask = grow(SOURCE, Expansion(left=16, bottom=24))
    assert filled.shape == (72, 80, 3) and mask.shape == (72, 80)
    np.testing.assert_array_equal(filled[:48, 16:], SOURCE)
    assert (mask[:, :16] == 255).all() and (mask[48:] == 255).all()
    assert (mask[:48, 16 : 16 + SEAM_BAND] == 255).all()  # the join is repainted too
    assert (mask[: 48 - SEAM_BAND, 16 + SEAM_BAND :] == 0).all()
    # the new area starts from the colours at its edge, softened
    near = filled[:48, 15].astype(float)
    assert np.abs(near.mean(axis=0) - SOURCE[:, 0].astype(float).mean(axis=0)).max() < 20


@pytest.mark.parametrize("inpaint_unet", [False, True])
def test_diffusers_outpainting_fills_the_new_area_from_the_context(tiny_request, inpaint_unet) -> None:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(build_tiny_sd(inpaint=inpaint_unet), "tiny")
    base = tiny_request.replace(strength=1.0, steps=4)
    request = outpaint_request(base, SOURCE, Expansion(right=32, top=16))
    assert (request.width, request.height) == (96, 64)
    done = _done(engine, request)
    keep = request.mask.pixels == 0
    np.testing.assert_array_equal(done.image[keep], request.init_image.pixels[keep])  # old pixels exact
    np.testing.assert_array_equal(done.image[16 + SEAM_BAND :, :56], SOURCE[SEAM_BAND:, :56])
    new = request.mask.pixels == 255
    assert np.abs(done.image[new].astype(float) - request.init_image.pixels[new]).mean() > 5  # painted
    # The context steers the new area: another picture, same seed and settings, fills it differently
    # (on a random-weight model only a little; were the new area painted without the old image as
    # context, it would be the same).
    other = outpaint_request(base, 255 - SOURCE, Expansion(right=32, top=16))
    assert not np.array_equal(_done(engine, other).image[new], done.image[new])


def test_patch_engine_outpaints_too() -> None:
    small = SOURCE[:32, :32]
    base = Request(engine="patch", seed=2, steps=3, width=32, height=32, strength=1.0)
    request = outpaint_request(base, small, Expansion(right=16))
    done = _done(Engines(), request)
    assert done.image.shape == (32, 48, 3)
    kept = 32 - SEAM_BAND - 4  # the patch engine feathers the mask's edge over a few pixels
    np.testing.assert_array_equal(done.image[:, :kept], small[:, :kept])
    assert np.abs(done.image[:, 32:].astype(float) - request.init_image.pixels[:, 32:]).mean() > 5


def test_cli_expand_grows_a_pick_with_its_own_recipe(tmp_path, capsys, tiny_sd_folder) -> None:
    from test_cli import run

    from studio.files.pngmeta import read_png_metadata

    pick = tmp_path / "pick.png"
    base = ["generate", "--model", tiny_sd_folder, "--steps", "3", "-q"]
    assert run(capsys, *base, "--width", "64", "--height", "64", "--seed", "4", "--out", pick)[0] == 0
    wide = tmp_path / "wide.png"
    code, _, err = run(capsys, "generate", "--recipe", pick, "--expand", "x=16", "--out", wide, "-q")
    assert code == 0, err
    out = np.asarray(Image.open(wide).convert("RGB"))
    assert out.shape == (64, 96, 3)
    np.testing.assert_array_equal(
        out[:, 16 + SEAM_BAND : 80 - SEAM_BAND], np.asarray(Image.open(pick))[:, 8:56]
    )
    meta = read_png_metadata(wide)
    assert meta.request.mask is not None and meta.request.strength == 1.0 and meta.request.seed == 4
    assert meta.provenance.parents == (read_png_metadata(pick).provenance.id,)
    again = tmp_path / "again.png"
    assert run(capsys, "generate", "--recipe", wide, "--out", again, "-q")[0] == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(wide)))
    code, _, err = run(capsys, "generate", "--expand", "right=8", "--out", tmp_path / "x.png")
    assert code == 2 and "--expand needs the image to grow" in err


def test_a_canvas_larger_than_the_engine_takes_is_outpainted_in_a_crop(monkeypatch) -> None:
    from backend import outpaint

    monkeypatch.setitem(outpaint.SIZE_LIMITS, "patch", (32, 128))
    base = Request(engine="patch", seed=2, steps=3, strength=1.0)
    wide = RNG.integers(0, 256, (64, 120, 3), dtype=np.uint8)
    request, (x, y) = outpaint.outpaint_crop(base, wide, Expansion(right=24))
    assert (request.width, request.height, x, y) == (128, 64, 16, 0)  # the new 24 px and 104 px of context
    np.testing.assert_array_equal(request.init_image.pixels[:, :96], wide[:, 16:112])
    assert (request.mask.pixels[:, -24:] == 255).all() and (
        request.mask.pixels[:, : 96 - SEAM_BAND] == 0
    ).all()
    small, at = outpaint.outpaint_crop(base, wide[:, :64], Expansion(right=24))
    assert at == (0, 0) and small.width == 88  # within the limit: the whole canvas
    with pytest.raises(RequestError, match="one side at a time"):
        outpaint.outpaint_crop(base, wide, Expansion(left=8, right=8))
    with pytest.raises(RequestError, match="grow at most 120 px"):
        outpaint.outpaint_crop(base, wide, Expansion(right=128))
    with pytest.raises(RequestError, match="along the other side"):
        outpaint.outpaint_crop(base, RNG.integers(0, 256, (64, 136, 3), dtype=np.uint8), Expansion(bottom=8))
