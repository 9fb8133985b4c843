"""The window's grids, upscales and canvas expansion (studio/jobs.py, studio/canvas_ops.py) on a real
session with the tiny diffusers model: what lands in the gallery and on the canvas, undo, projects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_tiny_sd

from backend.engines import Engines
from backend.grids import Axis, Grid, seed_grid
from backend.outpaint import SEAM_BAND, Expansion
from backend.upscale_spec import Upscale
from studio.canvas_ops import resize_canvas
from studio.document import Document
from studio.files.pngmeta import read_png_metadata
from studio.files.project import load_project, save_project
from studio.grid_sheet import save_grid
from studio.jobs import expand_canvas, run_grid, upscale_canvas, upscale_result


@pytest.fixture
def session(make_session):
    engines = Engines(device="cpu")
    engines.get("diffusers").use_pipeline(build_tiny_sd(), "tiny")
    session = make_session(engines, document=Document(64, 64))
    session.model.set(engine="diffusers", model="tiny", prompt="a red fox", steps=3, seed=5, guidance=5.0)
    return session


def _finish(qtbot, session, start):
    with qtbot.waitSignal(session.runs.result_added, timeout=60000) as added:
        start()
    return added.args[0]


def test_a_grid_is_one_gallery_entry_whose_cells_restore_their_recipes(qtbot, session, tmp_path) -> None:
    doc, gallery = session.document, session.gallery
    layers_before = len(doc.layers)
    frames = []
    session.runs.frame.connect(frames.append)
    grid = Grid(Axis("seed", (5, 6)), Axis("guidance", (3.0, 6.0)))
    entry = _finish(qtbot, session, lambda: run_grid(session.runs, grid))
    assert len(doc.layers) == layers_before and not doc.can_undo  # nothing lands on the canvas
    assert frames and all(f.preview.shape == (64, 64, 3) for f in frames)  # the mosaic, on the canvas
    cells = gallery.cells_of(entry.id)
    assert [(c.request.seed, c.request.guidance) for c in cells] == [(5, 3.0), (6, 3.0), (5, 6.0), (6, 6.0)]
    assert all(c.group == entry.id and c.parents == entry.parents and c.request.grid is None for c in cells)
    assert entry.request.grid == grid and entry.image.shape == (128, 128, 3)
    # Clicking a cell restores its exact recipe: Generate then makes the same picture.
    session.runs.restore(cells[3])
    assert (session.model.request.seed, session.model.request.guidance) == (6, 6.0)
    again = _finish(qtbot, session, session.runs.generate)
    assert np.abs(again.image.astype(int) - cells[3].image).max() <= 1  # a batch's float rounding
    # Exported as one labelled PNG whose recipe is the grid's.
    sheet = tmp_path / "grid.png"
    save_grid(str(sheet), entry, cells)
    meta = read_png_metadata(sheet)
    assert meta.request.grid == grid and meta.provenance.id == entry.id
    assert Image.open(sheet).size[0] > 128
    # A project keeps the grid and its cells together.
    path = tmp_path / "p.studio"
    save_project(path, doc, gallery)
    loaded = load_project(path)
    by_id = {r.id: r for r in loaded.results}
    assert by_id[entry.id].cells == entry.cells
    assert all(by_id[c].group == entry.id for c in entry.cells)
    gallery.remove(entry.id)
    assert gallery.get(cells[0].id) is None  # a grid goes with its cells


def test_upscaling_a_gallery_result_adds_an_entry_descending_from_it(qtbot, session) -> None:
    pick = _finish(qtbot, session, session.runs.generate)
    layers = len(session.document.layers)
    big = _finish(
        qtbot, session, lambda: upscale_result(session.runs, pick, Upscale(2, tile=64, overlap=16), 0.5)
    )
    assert big.image.shape == (128, 128, 3) and big.parents == (pick.id,)
    assert big.request.upscale == Upscale(2, tile=64, overlap=16) and big.request.seed == pick.request.seed
    assert np.array_equal(big.request.init_image.pixels, pick.image)
    assert len(session.document.layers) == layers  # a gallery entry, not a layer


def test_upscaling_the_canvas_scales_the_document_in_one_undo_step(qtbot, session) -> None:
    doc = session.document
    before = doc.composite()
    big = _finish(qtbot, session, lambda: upscale_canvas(session.runs, Upscale(2, tile=64, overlap=16), 0.4))
    assert (doc.width, doc.height) == (128, 128) and session.model.request.width == 128
    assert doc.layers[-1].source == big.id and doc.layers[-1].pixels.shape == (128, 128, 4)
    np.testing.assert_array_equal(doc.composite(), big.image)
    assert doc.undo_label == "Upscale canvas ×2"
    doc.undo()
    assert (doc.width, doc.height) == (64, 64)
    np.testing.assert_array_equal(doc.composite(), before)


def test_expanding_grows_the_canvas_and_fills_it_in_one_undo_step(qtbot, session) -> None:
    doc = session.document
    doc.paint(doc.layers[0].id, 0, 0, np.full((64, 64, 4), (200, 40, 40, 255), np.uint8))
    painted = doc.composite()
    entry = _finish(qtbot, session, lambda: expand_canvas(session.runs, Expansion(left=16, bottom=8)))
    assert (doc.width, doc.height) == (80, 72) and session.model.request.width == 80
    now = doc.composite()
    np.testing.assert_array_equal(
        now[: 64 - SEAM_BAND, 16 + SEAM_BAND :], painted[: 64 - SEAM_BAND, SEAM_BAND:]
    )
    assert np.abs(now[:, :16].astype(float) - 255).mean() > 5  # the new area is painted, not blank paper
    fill = doc.layers[-1]
    assert fill.source == entry.id and (fill.pixels[: 64 - SEAM_BAND, 16 + SEAM_BAND :, 3] == 0).all()
    assert entry.request.mask is not None and entry.request.strength == 1.0
    assert doc.undo_label == "Expand canvas"
    doc.undo()  # the fill and the growth go together
    assert (doc.width, doc.height) == (64, 64) and len(doc.layers) == 1
    np.testing.assert_array_equal(doc.composite(), painted)
    doc.redo()
    np.testing.assert_array_equal(doc.composite(), now)


def test_canvas_size_without_fill_moves_layers_and_the_mask(qtbot) -> None:
    doc = Document(32, 32)
    doc.paint_mask(0, 0, np.full((4, 4), 255, np.uint8))
    resize_canvas(doc, 48, 40, dx=8, dy=4)
    assert (doc.width, doc.height) == (48, 40) and doc.layers[0].bounds == (8, 4, 32, 32)
    assert doc.mask.shape == (40, 48) and doc.mask[4:8, 8:12].all() and doc.mask.sum() == 16 * 255
    assert (doc.composite()[:4] == 255).all()  # new area: the white paper
    doc.undo()
    assert (doc.width, doc.height, doc.layers[0].bounds) == (32, 32, (0, 0, 32, 32))


def test_a_grid_of_many_seeds_reports_bad_values_instead_of_running(qtbot, session) -> None:
    errors = []
    session.runs.error.connect(errors.append)
    assert run_grid(session.runs, seed_grid(1, 17)) is None
    assert errors and "2 to 16 cells" in errors[0] and not session.runs.running


def test_expanding_a_canvas_larger_than_the_engine_takes_paints_a_crop(qtbot, session, monkeypatch) -> None:
    from backend import outpaint

    monkeypatch.setitem(outpaint.SIZE_LIMITS, "diffusers", (64, 64))
    doc = session.document  # 64 × 64: growing it right by 16 makes it wider than the engine's 64
    entry = _finish(qtbot, session, lambda: expand_canvas(session.runs, Expansion(right=16)))
    assert (doc.width, doc.height) == (80, 64) and (entry.request.width, entry.request.height) == (64, 64)
    fill = doc.layers[-1]
    assert fill.bounds == (16, 0, 64, 64)  # the crop's place on the canvas
    assert (fill.pixels[:, -16:, 3] == 255).all() and (fill.pixels[:, : 48 - SEAM_BAND, 3] == 0).all()
