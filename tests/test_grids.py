"""Variation grids: axes and values as A1111 writes them, cells batched through the UNet equal their own
single runs, one mosaic preview, cancel, recipes (JSON and A1111 text) that re-run the grid."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_tiny_sd, build_tiny_sdxl

from backend.diffusers_engine import DiffusersEngine
from backend.engines import Engines
from backend.errors import RequestError
from backend.events import Done, StepEvent
from backend.grid_run import run_grid
from backend.grids import Axis, Grid, cells, parse_grid, parse_values, seed_grid, variation_grid
from backend.images import Picture
from backend.request import Concept
from studio.a1111 import request_from_a1111, to_a1111
from studio.recipe import recipe_from_json, recipe_to_json

TOLERANCE = 1e-4  # the parity tests' tolerance: a batch's float rounding differs from a single run's


# --- axes and values ------------------------------------------------------------------------------------


def test_values_as_a1111_writes_them() -> None:
    assert parse_values("seed", "1-4") == (1, 2, 3, 4)
    assert parse_values("seed", "10-2 (-4)") == (10, 6, 2)
    assert parse_values("guidance", "3, 7.5 ,12") == (3.0, 7.5, 12.0)
    assert parse_values("guidance", "4-8 [3]") == (4.0, 6.0, 8.0)
    assert parse_values("strength", "0.2-0.6 (+0.2)") == (0.2, 0.4, 0.6)
    assert parse_values("scheduler", "euler, euler_a") == ("euler", "euler_a")
    assert parse_values("prompt", 'fox, "cat, grey"') == ("fox", "cat, grey")
    for bad in ("", "1-5 (-1)", "x", "1-100"):
        with pytest.raises(RequestError):
            parse_values("seed", bad)


def test_axis_names_and_a1111_labels() -> None:
    grid = parse_grid("CFG Scale=4,8; concept:2=0,1.5")
    assert grid.x == Axis("guidance", (4.0, 8.0)) and grid.y == Axis("concept:2", (0.0, 1.5))
    assert parse_grid("Var. strength=0.1,0.2").x.name == "variation_strength"
    with pytest.raises(RequestError, match="unknown grid axis"):
        parse_grid("colour=1,2")
    with pytest.raises(RequestError, match="one or two axes"):
        parse_grid("seed=1,2;steps=2,3;cfg=1,2")


def test_cells_put_each_value_in(tiny_request) -> None:
    concept = Concept("ornate", "plain", weight=1.0)
    base = tiny_request.replace(prompt="a red fox in snow", concepts=(concept,))
    grid = Grid(Axis("prompt", ("fox", "hare")), Axis("concept:1", (0.5, 2.0)))
    made = cells(base.replace(grid=grid))
    assert [c.prompt for c in made] == ["a red fox in snow", "a red hare in snow"] * 2
    assert [c.concepts[0].weight for c in made] == [0.5, 0.5, 2.0, 2.0]
    assert all(c.grid is None and c.seed == base.seed for c in made)
    assert len({c.request_id for c in made}) == 4
    assert [c.seed for c in cells(base.replace(grid=seed_grid(5, 3)))] == [5, 6, 7]
    varied = cells(base.replace(variation_seed=9, grid=variation_grid(4, top=0.8)))
    assert [c.variation_strength for c in varied] == [0.2, 0.4, 0.6, 0.8]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (Grid(Axis("seed", tuple(range(17)))), "2 to 16 cells"),
        (Grid(Axis("seed", (1,))), "2 to 16 cells"),
        (Grid(Axis("guidance", (5.0, 80.0))), "CFG Scale: 80: guidance must be"),
        (Grid(Axis("concept:1", (1.0, 2.0))), "has 0 concept sliders"),
        (Grid(Axis("prompt", ("wolf", "cat"))), "does not contain 'wolf'"),
        (Grid(Axis("seed", (1, 2)), Axis("seed", (3, 4))), "both change Seed"),
        (Grid(Axis("variation_strength", (0.1, 0.2))), "needs a variation seed"),
    ],
)
def test_bad_grids_say_what_is_wrong(tiny_request, grid, message) -> None:
    with pytest.raises(RequestError, match=message):
        tiny_request.replace(grid=grid).validate()


def test_grid_recipes_read_back_equal(tiny_request) -> None:
    grid = Grid(Axis("prompt", ("fox", "hare, grey")), Axis("scheduler", ("euler", "dpmpp_2m")))
    request = tiny_request.replace(grid=grid)
    assert recipe_from_json(recipe_to_json(request)).request == request
    text = to_a1111(request)
    assert "Script: X/Y/Z plot" in text and "X Type: Prompt S/R" in text and "Y Type: Sampler" in text
    assert request_from_a1111(text)[0] == request
    seeds = tiny_request.replace(grid=Grid(Axis("seed", (3, 4)), Axis("guidance", (2.5, 7.0))))
    assert request_from_a1111(to_a1111(seeds))[0] == seeds
    # What A1111 itself writes for an X/Y plot over samplers reads as our scheduler names.
    theirs = 'a fox\nSteps: 3, Seed: 1, Size: 64x64, X Type: Sampler, X Values: "Euler a, DPM++ 2M"'
    assert request_from_a1111(theirs)[0].grid == Grid(Axis("scheduler", ("euler_a", "dpmpp_2m")))


# --- batched through the UNet ---------------------------------------------------------------------------


def _count_unet_batches(pipe) -> list[int]:
    calls: list[int] = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda sample, *a, **k: calls.append(sample.shape[0]) or forward(sample, *a, **k)
    return calls


def _assert_each_cell_is_its_own_run(engine, cell_requests, images) -> None:
    for request, image in zip(cell_requests, images, strict=True):
        single = engine.render(request)
        assert np.abs(image - single).max() <= TOLERANCE, request
    # and not trivially: the cells differ from each other
    assert min(np.abs(images[0] - other).max() for other in images[1:]) > 100 * TOLERANCE


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])  # per-cell ancestral noise; multistep
def test_a_batch_gives_each_cell_its_single_run(tiny_request, scheduler) -> None:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    pipe = build_tiny_sd()
    engine.use_pipeline(pipe, "tiny")
    concept = Concept("ornate gold", "plain", weight=0.0, start=0.3)
    base = tiny_request.replace(scheduler=scheduler, steps=4, concepts=(concept,), prompt="a red fox")
    grid = Grid(Axis("seed", (1, 2)), Axis("guidance", (3.0, 6.0)))
    made = cells(base.replace(grid=grid))
    made[1] = made[1].replace(prompt="a grey wolf", concepts=(Concept("ornate gold", "plain", 2.0, 0.3),))
    made[2] = made[2].replace(variation_seed=5, variation_strength=0.4, prompt_b="a cat", blend=0.5)
    calls = _count_unet_batches(pipe)
    images = engine.render_batch(made)
    assert calls == [8] * 4  # four cells, both halves of guidance, one UNet call per step
    _assert_each_cell_is_its_own_run(engine, made, images)


def test_img2img_and_inpaint_batches_equal_single_runs(tiny_request) -> None:
    rng = np.random.default_rng(3)
    init = Picture(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 255
    for inpaint_unet in (False, True):
        engine = DiffusersEngine(device="cpu", dtype="fp32")
        engine.use_pipeline(build_tiny_sd(inpaint=inpaint_unet), "tiny")
        base = tiny_request.replace(init_image=init, strength=0.7, steps=5, mask=Picture(mask))
        made = cells(base.replace(grid=Grid(Axis("seed", (1, 2, 3)))))
        _assert_each_cell_is_its_own_run(engine, made, engine.render_batch(made))


def test_sdxl_batch_equals_single_runs(tiny_request) -> None:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(build_tiny_sdxl(), "tiny")
    grid = Grid(Axis("prompt", ("fox", "heron")), Axis("guidance", (2.0, 5.0)))
    made = cells(tiny_request.replace(prompt="a red fox", grid=grid))
    _assert_each_cell_is_its_own_run(engine, made, engine.render_batch(made))


def test_requests_that_cannot_share_a_batch_are_refused(tiny_engine, tiny_request) -> None:
    with pytest.raises(RequestError, match="cannot run as one batch"):
        tiny_engine.render_batch([tiny_request, tiny_request.replace(steps=4)])


# --- running a grid -------------------------------------------------------------------------------------


def test_grid_run_mosaic_previews_and_one_done(tiny_request) -> None:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    pipe = build_tiny_sd()
    engine.use_pipeline(pipe, "tiny")
    # Strength is part of the schedule: two batches of two, run one after the other.
    grid = Grid(Axis("seed", (1, 2)), Axis("strength", (0.5, 1.0)))
    init = Picture(np.full((64, 64, 3), 128, np.uint8))
    request = tiny_request.replace(steps=4, init_image=init, preview="latent_rgb", grid=grid)
    calls = _count_unet_batches(pipe)
    events = list(run_grid(engine, request, threading.Event()))
    assert calls == [4] * 2 + [4] * 4  # strength 0.5 runs 2 of the 4 steps
    steps, done = events[:-1], events[-1]
    assert all(isinstance(e, StepEvent) and e.request_id == request.request_id for e in steps)
    assert all(e.preview is not None and e.preview.shape == (64, 64, 3) for e in steps)
    assert [e.step for e in steps][-1] == steps[-1].total == 2 * 2 + 2 * 4
    assert isinstance(done, Done) and done.request == request and len(done.cells) == 4
    assert done.image.shape == (128, 128, 3)
    for k, cell in enumerate(done.cells):
        row, column = divmod(k, 2)
        np.testing.assert_array_equal(
            done.image[row * 64 : row * 64 + 64, column * 64 : column * 64 + 64], cell.image
        )
        assert cell.request.grid is None and cell.extras["model"] == "tiny"
        single = [
            e for e in engine.generate(cell.request.replace(), threading.Event()) if isinstance(e, Done)
        ]
        assert np.abs(single[0].image.astype(int) - cell.image).max() <= 1  # float rounding, see above
    # Cells that finished show their image, shrunk into their quarter, while the others still run.
    last = steps[-1].preview.astype(int)
    quarter = np.asarray(
        Image.fromarray(done.cells[0].image).resize((32, 32), Image.Resampling.BILINEAR)
    ).astype(int)
    assert np.abs(last[:32, :32] - quarter).mean() < 2
    assert np.abs(last[32:, 32:] - quarter).mean() > 10


def test_cancelling_a_grid_gives_no_done(tiny_engine, tiny_request) -> None:
    cancel = threading.Event()
    seen = []
    for event in run_grid(tiny_engine, tiny_request.replace(grid=seed_grid(1, 4)), cancel):
        seen.append(event)
        if isinstance(event, StepEvent) and event.step >= 2:
            cancel.set()
    assert seen and not any(isinstance(e, Done) for e in seen)


def test_a_batch_too_big_for_memory_is_halved(tiny_request) -> None:
    engine = DiffusersEngine(device="cpu", dtype="fp32", max_batch=4)
    pipe = build_tiny_sd()
    engine.use_pipeline(pipe, "tiny")
    forward = pipe.unet.forward
    calls: list[int] = []

    def small_memory(sample, *a, **k):
        calls.append(sample.shape[0])
        if sample.shape[0] > 4:  # more than two images with guidance
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(sample, *a, **k)

    pipe.unet.forward = small_memory
    done = list(run_grid(engine, tiny_request.replace(grid=seed_grid(1, 4)), threading.Event()))[-1]
    assert isinstance(done, Done) and [c.request.seed for c in done.cells] == [1, 2, 3, 4]
    assert calls[0] == 8 and set(calls[1:]) == {4}


def test_patch_engine_grids_run_cell_by_cell() -> None:
    from backend.request import Request

    request = Request(engine="patch", prompt="", seed=3, steps=3, width=32, height=32, grid=seed_grid(3, 2))
    events = list(Engines().generate(request, threading.Event()))
    done = events[-1]
    assert isinstance(done, Done) and done.image.shape == (32, 64, 3)
    assert [c.request.seed for c in done.cells] == [3, 4] and "reference_shares" in done.cells[0].extras
    assert not np.array_equal(done.cells[0].image, done.cells[1].image)
    # progress over both cells; the first cell's image shows as soon as it is done
    assert [e.step for e in events[:-1]] == [1, 2, 3, 3, 4, 5, 6]


def test_a_batch_with_a_control_layer_equals_single_runs(tiny_request, tmp_path) -> None:
    from tiny_models import build_tiny_controlnet

    from backend.request import Control

    pipe = build_tiny_sd()
    folder = tmp_path / "tiny-cn"
    build_tiny_controlnet(pipe.unet, seed=1).save_pretrained(folder)
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    image = Picture(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    control = Control(str(folder), "raw", image, 0.8, 0.0, 0.75)
    made = cells(tiny_request.replace(controls=(control,), grid=Grid(Axis("seed", (1, 2, 3)))))
    _assert_each_cell_is_its_own_run(engine, made, engine.render_batch(made))


def test_engines_take_single_images_only(tiny_engine, tiny_request) -> None:
    """A grid reaching an engine directly (a server's, say) is refused, not run as its first cell."""
    from backend.patch_engine import PatchEngine
    from backend.request import Request

    with pytest.raises(RequestError, match="runs through backend.engines.Engines"):
        list(tiny_engine.generate(tiny_request.replace(grid=seed_grid(1, 2)), threading.Event()))
    patch = Request(engine="patch", steps=2, width=32, height=32, grid=seed_grid(1, 2))
    with pytest.raises(RequestError, match="runs through backend.engines.Engines"):
        list(PatchEngine().generate(patch, threading.Event()))


def test_a_lora_strength_axis_runs_each_strength(tiny_request, tmp_path) -> None:
    """A LoRA's strength is set per run (peft adapters are global), so each strength is a batch of its own."""
    from tiny_models import save_tiny_lora

    from backend.request import Lora

    pipe = build_tiny_sd()
    lora = save_tiny_lora(pipe, tmp_path / "style.safetensors", seed=3)
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    grid = parse_grid("lora:1=0,1;seed=1,2")
    assert grid.x.label == "LoRA 1" and grid.x.value_label(1.0) == "LoRA 1: 1"
    base = tiny_request.replace(loras=(Lora(str(lora), 0.5),), grid=grid)
    assert [(c.loras[0].strength, c.seed) for c in cells(base)] == [(0.0, 1), (1.0, 1), (0.0, 2), (1.0, 2)]
    calls = _count_unet_batches(pipe)
    done = list(run_grid(engine, base, threading.Event()))[-1]
    assert calls == [4] * 3 + [4] * 3  # strength 0 (both seeds), then strength 1: 3 steps each
    for cell in done.cells:
        single = [
            e for e in engine.generate(cell.request.replace(), threading.Event()) if isinstance(e, Done)
        ]
        assert np.abs(single[0].image.astype(int) - cell.image).max() <= 1
    assert np.abs(done.cells[0].image.astype(float) - done.cells[1].image).mean() > 1  # the LoRA acts
    with pytest.raises(RequestError, match="has 0 LoRAs"):
        tiny_request.replace(grid=grid).validate()
    assert request_from_a1111(to_a1111(base))[0].grid == grid
