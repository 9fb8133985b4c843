"""Following a sketch on the patch engine: its layout (ILVR), its colours as materials, its paper white."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from backend.errors import StudioError
from backend.images import Picture
from backend.materials import room_for_texture
from backend.patch_engine import PatchEngine
from backend.references import DEFAULT_FOLDER, load_references, match_prompt
from backend.request import Request
from backend.sketch import lowpass
from backend.sketch_plan import (
    SKETCH,
    SketchColour,
    main_colours,
    oklab,
    palettes,
    plan_materials,
    structure_size,
)

S = 64
CELLS = 16  # the done-when's low-pass: the mean of each 1/16-of-the-side cell
YELLOW, BROWN, WHITE = (240, 200, 40), (120, 70, 35), (255, 255, 255)


def ring() -> np.ndarray:
    y, x = np.mgrid[0:S, 0:S]
    r = np.hypot(y - S / 2, x - S / 2)
    img = np.full((S, S, 3), WHITE, np.uint8)
    img[(r > S * 0.25) & (r < S * 0.38)] = YELLOW
    return img


def shoe() -> np.ndarray:
    v, u = np.mgrid[0:S, 0:S] / S
    sole = (u > 0.12) & (u < 0.88) & (v > 0.55) & (v < 0.78)
    shaft = (u > 0.12) & (u < 0.45) & (v > 0.25) & (v < 0.78)
    toe = (u - 0.7) ** 2 / 0.2**2 + (v - 0.6) ** 2 / 0.12**2 < 1
    img = np.full((S, S, 3), WHITE, np.uint8)
    img[sole | shaft | toe] = BROWN
    return img


def two_regions() -> np.ndarray:
    img = np.full((S, S, 3), WHITE, np.uint8)
    rows = slice(int(S * 0.15), int(S * 0.85))
    img[rows, int(S * 0.1) : int(S * 0.48)] = YELLOW
    img[rows, int(S * 0.52) : int(S * 0.9)] = BROWN
    return img


SKETCHES = {"ring": (ring, "gold"), "shoe": (shoe, "leather shoe"), "two": (two_regions, "gold leather")}


@pytest.fixture(scope="module")
def engine():
    return PatchEngine(max_keys=2048)


def sketch_run(engine, sketch, prompt, **fields):
    fields = {"strength": 0.75, "steps": 8, "seed": 0, **fields}
    request = Request(width=S, height=S, init_image=Picture(sketch), prompt=prompt, **fields)
    return list(engine.generate(request, threading.Event()))[-1]


def cells(img: np.ndarray) -> np.ndarray:
    """The image (0–1) cut into CELLS×CELLS cells: cell row, y, cell column, x, channel."""
    b = S // CELLS
    return img.reshape(CELLS, b, CELLS, b, -1).astype(np.float64) / 255


def texture(img: np.ndarray, where: np.ndarray | None = None) -> float:
    """High-frequency energy: the variance within each cell (features finer than 1/16 of the side)."""
    var = cells(img).var(axis=(1, 3)).mean(-1)
    return float(var[where].mean() if where is not None else var.mean())


def references_drawn(engine, done) -> float:
    """The texture of the references a run drew from (not the sketch), weighted by their shares."""
    refs = engine.references(done.request.model)
    fitted = engine._fit(refs, S, S)
    shares = {n: v for n, v in done.extras["reference_shares"].items() if n != SKETCH and v > 0}
    total = sum(shares.values())
    energy = 0.0
    for name, share in shares.items():
        pixels = ((fitted[refs.names.index(name)].permute(1, 2, 0).numpy() + 1) * 127.5).round()
        energy += share / total * texture(pixels.astype(np.uint8))
    return energy


def grown(mask: np.ndarray, radius: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * radius + 1))
    return np.asarray(image) > 127


@pytest.mark.parametrize("which", list(SKETCHES))
def test_output_keeps_the_sketch_layout_textured_in_its_materials_on_white(engine, which):
    make, prompt = SKETCHES[which]
    sketch = make()
    white = (sketch == 255).all(-1)
    inside = ~cells(white[..., None].astype(np.uint8) * 255).max(axis=(1, 3))[..., 0].astype(bool)
    for seed in range(3):
        done = sketch_run(engine, sketch, prompt, seed=seed)
        out = done.image
        # The layout: the 1/16-of-the-side low-pass follows the sketch.
        low = np.abs(cells(out).mean(axis=(1, 3)) - cells(sketch).mean(axis=(1, 3))).mean()
        assert low <= 0.06, (which, seed, low)
        # Textured, not a blurred sketch: inside the strokes, at least half the references' energy.
        ratio = texture(out, inside) / references_drawn(engine, done)
        assert ratio >= 0.5, (which, seed, ratio)
        # The paper stays white.
        assert 1 - out[white].mean() / 255 <= 0.1
        far = white & ~grown(~white, 2)
        assert (1 - out[far].min(-1) / 255).max() <= 0.1
        print(f"{which} seed {seed}: low-pass {low:.4f}, texture ratio {ratio:.2f}")


def test_each_colour_is_painted_in_its_material(engine):
    sketch = two_regions()
    done = sketch_run(engine, sketch, "gold leather")
    names = done.extras["references"]
    index = done.attribution[..., 0].astype(int)
    picked = lambda colour: [names[i] for i in index[(sketch == colour).all(-1)]]  # noqa: E731
    yellow, brown, white = picked(YELLOW), picked(BROWN), picked(WHITE)
    assert yellow.count("hammered_gold") / len(yellow) > 0.95  # yellow strokes become gold
    assert brown.count("pebbled_leather") / len(brown) > 0.95  # brown becomes leather
    assert white.count(SKETCH) / len(white) > 0.95  # white stays background
    # A pin overrides the palette: the brown painted in suede instead.
    pinned = sketch_run(engine, sketch, "gold leather", colour_pins=(("#784623", "suede"),))
    names = pinned.extras["references"]
    brown = [names[i] for i in pinned.attribution[..., 0].astype(int)[(sketch == BROWN).all(-1)]]
    assert brown.count("suede") / len(brown) > 0.95


def test_a_pin_can_bring_in_a_reference_the_prompt_did_not_name_or_keep_a_colour(engine):
    sketch = two_regions()
    done = sketch_run(engine, sketch, "gold", colour_pins=(("#784623", "denim"), ("#f0c828", SKETCH)))
    names = done.extras["references"]
    index = done.attribution[..., 0].astype(int)
    brown = [names[i] for i in index[(sketch == BROWN).all(-1)]]
    assert brown.count("denim") / len(brown) > 0.95
    yellow = (sketch == YELLOW).all(-1)
    assert np.abs(done.image[yellow].astype(int) - YELLOW).mean() < 3  # kept as drawn
    with pytest.raises(StudioError, match="'denimm', which is not a reference"):
        sketch_run(engine, sketch, "gold", colour_pins=(("#784623", "denimm"),))


def test_structure_scale_and_steps_change_how_closely_the_sketch_is_kept(engine):
    sketch = two_regions()

    def low_error(**fields):
        out = sketch_run(engine, sketch, "gold leather", seed=1, **fields).image
        return np.abs(cells(out).mean(axis=(1, 3)) - cells(sketch).mean(axis=(1, 3))).mean()

    exact, broad = low_error(structure=0.0), low_error(structure=1.0)
    off = low_error(structure_steps=0.0)
    assert exact < broad < off, (exact, broad, off)


def test_lowpass_keeps_flat_colour_flat_and_mass_and_tiles_when_circular():
    flat = torch.full((3, 40, 48), 0.3)
    assert torch.allclose(lowpass(flat, 10.0), flat, atol=1e-5)  # mirrored borders: no dark frame
    spot = torch.zeros(1, 40, 48)
    spot[0, 20, 24] = 1.0
    blurred = lowpass(spot, 8.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-4) and float(blurred.max()) < 0.1
    noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    rolled = lowpass(noise.roll((5, 9), (1, 2)), 6.0, circular=True)
    assert torch.allclose(rolled, lowpass(noise, 6.0, circular=True).roll((5, 9), (1, 2)), atol=1e-5)
    assert (
        structure_size(0.0, 256) == 8 and structure_size(0.5, 256) == 32 and structure_size(1.0, 256) == 128
    )


def test_main_colours_find_the_strokes_and_the_paper():
    colours = main_colours(shoe())
    assert [c.hex for c in colours] == ["#ffffff", "#784623"]
    assert colours[0].background and not colours[1].background
    # Anti-aliased edges do not become colours of their own.
    soft = np.asarray(Image.fromarray(two_regions()).filter(ImageFilter.GaussianBlur(1.2)))
    assert len(main_colours(soft)) == 3
    # A full-bleed sketch has no paper.
    full = np.zeros((S, S, 3), np.uint8)
    full[:, : S // 2], full[:, S // 2 :] = YELLOW, BROWN
    assert not any(c.background for c in main_colours(full))


def test_palettes_match_colours_to_materials_within_the_prompts_choice():
    refs = load_references(DEFAULT_FOLDER)

    def best(rgb, prompt):
        sel = match_prompt(refs, prompt)
        names = [refs.names[i] for i in sel.indices]
        colours = [SketchColour(rgb, 1.0)]
        plan = plan_materials(
            colours, names, list(sel.shares), [palettes(refs)[i] for i in sel.indices], None
        )
        return {n for n, p in zip(plan.names, plan.priors[0], strict=True) if p > -1e3}

    assert best(YELLOW, "gold") == {"hammered_gold"}
    assert best((230, 160, 150), "gold") == {"rose_gold"}
    assert best(BROWN, "leather") == {"pebbled_leather"}
    assert best((40, 120, 60), "leather") <= {"crocodile", "snake_scales"}


def test_a_bright_colour_is_darkened_until_the_materials_texture_fits():
    refs = load_references(DEFAULT_FOLDER)
    gold = torch.from_numpy(refs.references[refs.names.index("hammered_gold")].pixels).permute(2, 0, 1)
    gold = gold.float() / 127.5 - 1
    colour = (room_for_texture(gold, YELLOW) + 1) * 127.5
    hue = lambda rgb: np.degrees(np.arctan2(*oklab(np.asarray(rgb) / 255.0)[[2, 1]]))  # noqa: E731
    assert colour.max() < 235 and abs(hue(colour.numpy()) - hue(YELLOW)) < 3  # darker, same hue
    dark = (room_for_texture(gold, BROWN) + 1) * 127.5
    assert np.allclose(dark.numpy(), BROWN, atol=0.5)  # dark colours are left alone


def test_inputs_are_validated():
    base = Request(width=S, height=S, init_image=Picture(ring()))
    for fields, message in [
        ({"structure": 1.5}, "structure must be between 0 and 1"),
        ({"structure_steps": -0.1}, "structure steps"),
        ({"colour_pins": (("yellow", "gold"),)}, "must look like #f0c828"),
        ({"colour_pins": (("#f0c828", " "),)}, "names no reference"),
    ]:
        with pytest.raises(StudioError, match=message):
            base.replace(**fields).validate()


def test_inpainting_blends_across_a_feathered_edge_and_its_surroundings_vote(engine):
    init = np.full((S, S, 3), BROWN, np.uint8)
    y, x = np.mgrid[0:S, 0:S]
    init[np.hypot(y - S / 2, x - S / 2) < 8] = YELLOW  # a gold stroke painted into the masked area
    mask = np.zeros((S, S), np.uint8)
    mask[8:56, 8:56] = 255
    request = Request(
        width=S, height=S, init_image=Picture(init), mask=Picture(mask), prompt="gold", steps=8, seed=2
    )
    done = list(engine.generate(request, threading.Event()))[-1]
    out, names = done.image, done.extras["references"]
    index = done.attribution[..., 0].astype(int)
    far = ~grown(mask > 0, 4)
    assert np.array_equal(out[far], init[far])  # beyond the feathered edge nothing changes
    assert not np.array_equal(out[mask > 0], init[mask > 0])
    stroke = np.hypot(y - S / 2, x - S / 2) < 6
    assert [names[i] for i in index[stroke]].count("hammered_gold") / stroke.sum() > 0.95
    # Just inside the edge the surroundings' own patches win: the repaint continues them; deep inside,
    # the prompt's material has the area.
    band = (mask > 0) & ~shrunk(mask > 0, 2)
    assert [names[i] for i in index[band]].count(SKETCH) / band.sum() > 0.8
    deep = shrunk(mask > 0, 8) & ~grown(stroke, 3)
    assert [names[i] for i in index[deep]].count(SKETCH) / deep.sum() < 0.2
    # No seam: across the mask's edge the colour steps no more than it varies inside the kept area.
    edge_in = out[band].astype(float).mean(0)
    edge_out = out[grown(mask > 0, 2) & ~(mask > 0)].astype(float).mean(0)
    assert np.abs(edge_in - edge_out).mean() < 12


def shrunk(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~grown(~mask, radius)


def halves() -> np.ndarray:
    img = np.zeros((S, S, 3), np.uint8)
    img[:, : S // 2] = (200, 60, 60)
    img[:, S // 2 :] = (60, 60, 200)
    return img


def test_attribution_map_shows_which_reference_fed_each_pixel_in_its_legend_colour(engine, tmp_path):
    from backend.attribution import attribution_sheet, legend, name_at
    from studio.cli.main import main

    sketch = halves()
    pins = (("#c83c3c", "brick"), ("#3c3cc8", "denim"))
    done = sketch_run(engine, sketch, "", colour_pins=pins, seed=4)
    names = done.extras["references"]
    index = done.attribution[..., 0].astype(int)
    left, right = index[:, 2 : S // 2 - 2], index[:, S // 2 + 2 : -2]  # clear of the blended middle
    assert (left == names.index("brick")).mean() > 0.98 and (right == names.index("denim")).mean() > 0.98
    entries = {e.name: e for e in legend(done.attribution, names)}
    assert set(entries) == {"brick", "denim"} and entries["brick"].rgb != entries["denim"].rgb
    assert entries["brick"].share == pytest.approx(0.5, abs=0.05)
    assert name_at(done.attribution, names, 3, 10).startswith("brick (")
    # The PNG: the map scaled up, each half in its reference's legend colour, the legend beside it.
    sheet = np.asarray(attribution_sheet(done.attribution, names))
    scale = 256 // S
    for entry, columns in ((entries["brick"], slice(8, 100)), (entries["denim"], slice(156, 248))):
        drawn = sheet[: S * scale, columns].reshape(-1, 3).astype(int)
        assert (np.abs(drawn - entry.rgb).max(1) <= 12).mean() > 0.95
    assert sheet.shape[1] > S * scale  # room for the legend
    swatches = sheet[:, S * scale :].reshape(-1, 3)
    for entry in entries.values():
        assert (swatches == entry.rgb).all(1).sum() > 50  # each legend swatch is drawn
    # The same from the command line.
    Image.fromarray(sketch).save(tmp_path / "sketch.png")
    argv = ["generate", "--init-image", str(tmp_path / "sketch.png"), "--steps", "8", "--seed", "4"]
    argv += ["--pin", "#c83c3c=brick", "--pin", "#3c3cc8=denim", "--attribution", str(tmp_path / "map.png")]
    assert main([*argv, "--out", str(tmp_path / "out.png"), "-q"]) == 0
    written = np.asarray(Image.open(tmp_path / "map.png").convert("RGB"))
    assert np.abs(written[: S * scale, 8:100].astype(int) - entries["brick"].rgb).max(-1).mean() < 12
