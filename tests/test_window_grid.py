"""The window's grids, expansion and upscaling: Generate → Variations grid, the gallery grid that opens into
its cells, Image → Expand canvas / Canvas size / Upscale canvas, Upscale… on a gallery result."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog
from tiny_models import build_tiny_sd

from backend.engines import Engines
from studio.files.pngmeta import read_png_metadata
from ui.grid_dialog import GridDialog
from ui.image_dialogs import ExpandDialog, UpscaleDialog


@pytest.fixture
def window(make_window):
    engines = Engines(device="cpu")
    engines.get("diffusers").use_pipeline(build_tiny_sd(), "tiny")
    window = make_window(engines, size=64)
    window.session.model.set(engine="diffusers", model="tiny", prompt="a red fox", steps=3, seed=5)
    return window


def _accept(monkeypatch, dialog_class, setup=lambda d: None) -> None:
    """Let the next `dialog_class` be set up by the test and accepted instead of waiting for a person."""

    def exec_(self) -> int:
        setup(self)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(dialog_class, "exec", exec_)


def test_grid_dialog_counts_cells_and_refuses_bad_values(window) -> None:
    dialog = GridDialog(window.session.model.request, window)
    run = dialog.buttons.button(dialog.buttons.StandardButton.Ok)
    assert dialog.grid().x.values == (5, 6, 7, 8) and run.isEnabled()  # four seeds from the panel's
    dialog.mode.setCurrentIndex(1)
    assert dialog.grid().x.name == "variation_strength" and dialog.changes() == {"variation_seed": 6}
    dialog.mode.setCurrentIndex(2)
    dialog.x_values.setText("1-3")
    dialog.y_values.setText("4,8")
    assert "6 images (3 × 2)" in dialog.summary.text() and run.isEnabled()
    dialog.x_values.setText("1-40")
    assert "at most 16" in dialog.summary.text() and not run.isEnabled()
    dialog.x_values.setText("1-3")
    dialog.y_values.setText("4,80")
    assert "guidance must be between 0 and 50" in dialog.summary.text() and not run.isEnabled()


def test_a_grid_from_the_menu_opens_into_cells_that_restore_their_recipes(
    window, qtbot, monkeypatch, tmp_path
) -> None:
    def x_y(dialog) -> None:
        dialog.mode.setCurrentIndex(2)
        dialog.x_values.setText("5,6")
        dialog.y_values.setText("3,7")

    _accept(monkeypatch, GridDialog, x_y)
    layers = len(window.document.layers)
    with qtbot.waitSignal(window.session.runs.result_added, timeout=60000):
        window.image_actions.grid_action.trigger()
    assert len(window.document.layers) == layers  # a grid lands in the gallery, not on the canvas
    gallery = window.gallery_panel.list
    assert gallery.count() == 1 and gallery.item(0).text() == "grid 2×2"
    view = window.image_actions.grid_view  # opened by itself when the grid was done
    assert view.isVisible() and len(view.buttons) == 4
    qtbot.mouseClick(view.buttons[3], Qt.MouseButton.LeftButton)
    request = window.session.model.request
    assert (request.seed, request.guidance) == (6, 7.0) and window.session.runs.seed_locked
    path = view.export(str(tmp_path / "grid.png"))
    meta = read_png_metadata(path)
    assert meta.request.grid is not None and meta.request.grid.count == 4
    assert Image.open(path).size[0] > 128  # the cells and their labels
    view.close()
    # Clicking the gallery entry opens the grid again.
    window.gallery_panel._clicked(gallery.item(0))
    qtbot.waitUntil(
        lambda: any(w.objectName() == "grid-view" and w.isVisible() for w in window.findChildren(QDialog))
    )


def test_expand_canvas_from_the_menu_grows_and_fills_in_one_undo_step(window, qtbot, monkeypatch) -> None:
    _accept(monkeypatch, ExpandDialog, lambda d: (d.sides["right"].setValue(0), d.sides["left"].setValue(24)))
    with qtbot.waitSignal(window.session.runs.result_added, timeout=60000):
        window.image_actions.expand_action.trigger()
    doc = window.document
    assert (doc.width, doc.height) == (88, 64)
    assert window.prompt_panel is not None and window.session.model.request.width == 88
    assert window.undo_action.text() == "Undo Expand canvas"
    window.undo_action.trigger()
    assert (doc.width, doc.height) == (64, 64) and len(doc.layers) == 1


def test_canvas_size_grows_the_paper_without_a_run(window, monkeypatch) -> None:
    _accept(
        monkeypatch, ExpandDialog, lambda d: (d.sides["right"].setValue(0), d.sides["bottom"].setValue(16))
    )
    window.image_actions.canvas_size_action.trigger()
    doc = window.document
    assert (doc.width, doc.height) == (64, 80) and not window.session.runs.running
    assert (doc.composite()[64:] == 255).all()


def test_upscale_canvas_and_a_gallery_result(window, qtbot, monkeypatch) -> None:
    with qtbot.waitSignal(window.session.runs.result_added, timeout=60000):
        window.generate_action.trigger()

    def two_no_refine(dialog) -> None:
        dialog.strength.setValue(0.0)

    _accept(monkeypatch, UpscaleDialog, two_no_refine)
    pick = window.session.gallery.results[-1]
    from ui.image_dialogs import upscale_result_dialog

    with qtbot.waitSignal(window.session.runs.result_added, timeout=60000) as added:
        upscale_result_dialog(window, window.session, pick)
    big = added.args[0]
    assert big.image.shape == (128, 128, 3) and big.parents == (pick.id,)
    np.testing.assert_array_equal(
        big.image, np.asarray(Image.fromarray(pick.image).resize((128, 128), Image.LANCZOS))
    )
    assert window.gallery_panel.list.item(0).text().startswith("×2")
    with qtbot.waitSignal(window.session.runs.result_added, timeout=60000):
        window.image_actions.upscale_action.trigger()
    assert (window.document.width, window.document.height) == (128, 128)
    assert window.undo_action.text() == "Undo Upscale canvas ×2"
