"""The studio window end to end: previews reach the canvas, results land, recipes restore, runs cancel,
errors leave it usable, quitting mid-run is clean, and `studio --demo` prints its line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from fake_engine import FakeEngine, fake_image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QColor, QDropEvent
from PySide6.QtWidgets import QApplication

from studio.document import Document
from ui.main_window import MainWindow

ROOT = Path(__file__).resolve().parents[1]


def drop_file(window: MainWindow, path: Path) -> None:
    """Deliver what Qt delivers when a file is dropped on the window."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    drop = QDropEvent(
        QPointF(50, 50),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(drop)


def centre_colour(window: MainWindow) -> QColor:
    """The colour the canvas widget shows at the middle of the document."""
    canvas = window.canvas
    return canvas.grab().toImage().pixelColor(canvas.doc_rect().center().toPoint())


def test_generate_paints_every_step_then_adds_a_layer_and_gallery_entry(make_window, qtbot):
    gates = [threading.Event() for _ in range(4)]
    window = make_window(FakeEngine(gates=gates))
    session = window.session
    window.prompt_panel.seed.lock.setChecked(True)
    window.prompt_panel.prompt.setPlainText("a gold ring")
    window.prompt_panel.steps.setValue(4)
    layers_before = len(session.document.layers)
    qtbot.keyClick(window, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    final = fake_image(session.runs.current)
    for step, gate in enumerate(gates, start=1):
        with qtbot.waitSignal(
            session.runs.result_added if step == 4 else session.runs.progress, timeout=5000
        ) as blocker:
            gate.set()
        qtbot.waitUntil(lambda s=step: window.canvas.frames_painted == s)
        expected = (final.astype(np.uint16) * step // 4).astype(np.uint8)[32, 32]
        got = centre_colour(window)
        assert abs(got.red() - int(expected[0])) <= 2 and abs(got.green() - int(expected[1])) <= 2
    result = blocker.args[0]
    assert result.request.prompt == "a gold ring" and result.request.steps == 4
    assert np.array_equal(result.image, final)
    assert len(session.document.layers) == layers_before + 1
    assert session.document.layers[-1].source == result.id
    assert window.gallery_panel.list.count() == 1
    assert "a gold ring" in window.gallery_panel.list.item(0).toolTip()
    qtbot.waitUntil(lambda: not window.canvas.has_preview)
    # The result layer is undoable like any other operation.
    window.undo_action.trigger()
    assert len(session.document.layers) == layers_before


def test_clicking_a_gallery_entry_restores_its_recipe_into_the_panels(make_window, qtbot):
    window = make_window(FakeEngine(steps=2))
    panel = window.prompt_panel
    panel.prompt.setPlainText("a red shoe")
    panel.guidance.setValue(3.5)
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    panel.prompt.setPlainText("something else")
    panel.guidance.setValue(9.0)
    window.slider_panel.locality.slider.setValue(900)
    item = window.gallery_panel.list.item(0)
    rect = window.gallery_panel.list.visualItemRect(item)
    qtbot.mouseClick(window.gallery_panel.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert panel.prompt.toPlainText() == "a red shoe"
    assert (
        window.session.runs.seed_locked
        and panel.seed.lock.isChecked()
        and panel.seed.edit.text() == str(window.session.gallery.results[0].request.seed)
    )
    assert panel.guidance.value() == 3.5
    assert window.slider_panel.locality.value() == 0.5
    # "Use as init" puts the result back on the canvas and switches to image-to-image.
    layers = len(window.document.layers)
    window.gallery_panel.use_as_init.click()
    assert len(window.document.layers) == layers + 1
    assert np.array_equal(window.document.layers[-1].pixels[..., :3], window.session.gallery.results[0].image)
    assert panel.mode.currentData() == "img2img" and panel.strength.isEnabled()


def test_escape_cancels_the_run_and_the_next_one_works(make_window, qtbot):
    gates = [threading.Event() for _ in range(3)]
    window = make_window(FakeEngine(gates=gates))
    session = window.session
    window.prompt_panel.steps.setValue(3)
    layers_before = len(session.document.layers)
    window.generate_action.trigger()
    gates[0].set()
    qtbot.waitUntil(lambda: window.canvas.frames_painted == 1)
    assert window.cancel_action.isEnabled()
    with qtbot.waitSignal(session.runs.run_ended, timeout=5000) as ended:
        qtbot.keyClick(window.canvas, Qt.Key.Key_Escape)
    assert ended.args == ["cancelled"]
    assert len(session.document.layers) == layers_before and not session.gallery.results
    assert not window.canvas.has_preview and "Cancelled" in window.status.message.text()
    for gate in gates:
        gate.set()
    with qtbot.waitSignal(session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    assert len(session.gallery.results) == 1


def test_engine_error_shows_in_status_bar_and_dialog_and_the_window_stays_usable(make_window, qtbot):
    engine = FakeEngine(raise_at=2, error=RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    window = make_window(engine)
    session = window.session
    with qtbot.waitSignal(session.runs.error, timeout=5000):
        window.generate_action.trigger()
    assert "Out of memory" in window.status.message.text()
    assert window.error_box is not None and window.error_box.isVisible()
    assert "smaller size" in window.error_box.informativeText()
    window.error_box.accept()
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
    # Still usable: a stroke paints and undoes, and the next run (no error this time) lands.
    layer = session.document.add_layer("ink")
    canvas = window.canvas
    canvas.actual_size()
    start = canvas.offset.toPoint() + QPoint(10, 10)
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=start)
    qtbot.mouseMove(canvas, start + QPoint(20, 5))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=start + QPoint(20, 5))
    assert layer.pixels[..., 3].any()
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not layer.pixels[..., 3].any()
    engine.raise_at = None
    with qtbot.waitSignal(session.runs.result_added, timeout=5000):
        window.generate_action.trigger()


def test_closing_the_window_during_a_run_stops_the_engine_thread(make_window, qtbot):
    gate = threading.Event()  # never set: the run is stuck until cancelled
    window = make_window(FakeEngine(gates=[gate]))
    window.generate_action.trigger()
    qtbot.waitUntil(lambda: window.session.runs.running and window.session.host.busy)
    assert window.close()
    assert not window.session.host.is_alive()


def test_window_layout_is_remembered(make_window, qtbot, tmp_path):
    window = make_window(FakeEngine(steps=1))
    window.resize(700, 560)  # within the offscreen screen, which restoreGeometry clamps to
    window.docks["gallery"].hide()
    window.close()
    again = make_window(FakeEngine(steps=1))
    assert again.size().width() == 700
    assert not again.docks["gallery"].isVisible()


def test_demo_command_prints_its_line_and_writes_the_screenshot(tmp_path):
    out = tmp_path / "demo.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    command = ["-m", "ui.app", "--demo", str(out), "--size", "64", "--steps", "4"]
    proc = subprocess.run(
        [sys.executable, *command, "--settings", str(tmp_path / "s.ini")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    match = re.fullmatch(r"frames=(\d+) steps=4 max_stall_ms=\d+", lines[0]) if len(lines) == 1 else None
    # Every step's preview painted: the demo's engine waits for each frame to reach the canvas, which
    # paints every frame it gets, so this holds on a loaded machine too (only slower).
    assert match and int(match.group(1)) == 4, proc.stdout
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inpaint_from_the_mask_brush_keeps_unmasked_pixels(make_window, qtbot):
    window = make_window(FakeEngine(steps=2))
    session, canvas = window.session, window.canvas
    canvas.actual_size()
    origin = canvas.offset.toPoint()
    window.brush_bar.tool_actions["mask"].trigger()
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=origin + QPoint(20, 20))
    qtbot.mouseMove(canvas, origin + QPoint(40, 24))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=origin + QPoint(40, 24))
    mask = session.document.mask.copy()
    assert mask[22, 30] == 255 and not mask[50:, :].any()
    panel = window.prompt_panel
    panel.mode.setCurrentIndex(panel.mode.findData("inpaint"))
    panel.mode.activated.emit(panel.mode.currentIndex())
    assert session.model.mode == "inpaint" and panel.strength.isEnabled()
    before = session.document.composite()
    with qtbot.waitSignal(session.runs.result_added, timeout=5000) as blocker:
        window.generate_action.trigger()
    result = blocker.args[0]
    assert np.array_equal(result.request.mask.pixels, mask)
    keep = mask == 0
    assert np.array_equal(result.image[keep], before[keep])
    assert not np.array_equal(result.image[~keep], before[~keep])


def test_live_slider_burst_starts_few_runs_and_ends_on_the_final_values(make_window, qtbot):
    engine = FakeEngine(steps=3)
    window = make_window(engine)
    session = window.session
    window.live_action.setChecked(True)
    assert session.runs.live_enabled
    slider = window.slider_panel.locality.slider
    for tick in range(0, 1000, 10):  # a drag: 100 values
        slider.setValue(tick)
    qtbot.waitUntil(lambda: not session.runs.running and bool(session.gallery.results), timeout=10000)
    qtbot.waitUntil(lambda: not session.runs.running, timeout=10000)
    final = session.gallery.results[-1]
    assert final.request.locality == 0.99 == session.model.request.locality
    assert np.array_equal(final.image, fake_image(final.request))
    assert len(engine.started_runs) < 20


def test_layers_panel_operations_are_undoable(make_window, qtbot):
    window = make_window(FakeEngine(steps=1))
    doc, panel = window.document, window.layers_panel
    panel.buttons["add"].click()
    panel.buttons["duplicate"].click()
    assert [layer.name for layer in doc.layers] == ["Background", "Layer 2", "Layer 2 copy"]
    assert panel.list.item(0).text() == "Layer 2 copy"  # top layer first
    panel.list.item(0).setCheckState(Qt.CheckState.Unchecked)
    assert not doc.layers[2].visible
    panel.list.item(0).setText("sketch")
    assert doc.layers[2].name == "sketch"
    panel.buttons["down"].click()
    assert [layer.name for layer in doc.layers] == ["Background", "sketch", "Layer 2"]
    panel.opacity.setValue(40)
    panel.opacity.sliderReleased.emit()
    assert doc.layer(doc.active_id).opacity == 0.4
    panel.buttons["delete"].click()
    assert len(doc.layers) == 2
    for _ in range(6):
        window.undo_action.trigger()
    assert [layer.name for layer in doc.layers] == ["Background", "Layer 2"]


def test_open_image_as_layer_and_a_broken_file_is_reported(make_window, qtbot, tmp_path):
    from PIL import Image

    window = make_window(FakeEngine(steps=1))
    good = tmp_path / "sketch.png"
    Image.new("RGB", (32, 16), (255, 0, 0)).save(good)
    assert window.add_image_layer(str(good))
    layer = window.document.layers[-1]
    assert layer.name == "sketch" and tuple(layer.pixels[32, 32]) == (255, 0, 0, 255)
    assert layer.pixels[0, 0, 3] == 0  # fitted 64×32 in the middle: transparent above
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert not window.add_image_layer(str(bad))
    assert "broken.png" in window.status.message.text() and window.error_box is not None
    assert len(window.document.layers) == 2
    # Dropping a file on the window does the same.
    drop_file(window, good)
    assert len(window.document.layers) == 3 and window.document.layers[-1].name == "sketch"


def test_dropping_a_project_opens_it_as_the_document(make_window, qtbot, tmp_path):
    from studio.files.project import save_project

    saved = Document(48, 32)
    saved.add_layer("ink", np.full((32, 48, 3), 40, dtype=np.uint8))
    path = tmp_path / "sketch book.studio"
    save_project(path, saved, prompt_history=["brass buckle"])
    window = make_window(FakeEngine(steps=1))
    drop_file(window, path)
    doc = window.document
    assert (doc.width, doc.height) == (48, 32)
    assert [layer.name for layer in doc.layers] == ["Background", "ink"]
    assert np.array_equal(doc.layers[1].pixels, saved.layers[1].pixels)
    assert "sketch book" in window.windowTitle()


def test_new_canvas_of_a_chosen_size(make_window, qtbot):
    window = make_window(FakeEngine(steps=1))
    window.prompt_panel.size_box.setCurrentIndex(window.prompt_panel.size_box.findData("128x128"))
    window.prompt_panel.size_box.activated.emit(window.prompt_panel.size_box.currentIndex())
    doc = window.document
    assert (doc.width, doc.height) == (128, 128) and len(doc.layers) == 1
    assert (window.session.model.request.width, window.session.model.request.height) == (128, 128)
    assert window.canvas.composite_image().width() == 128


def test_export_png_carries_the_recipe_of_the_result_on_the_canvas(make_window, qtbot, tmp_path):
    from studio.files.pngmeta import read_png_metadata
    from ui.exports import export_png

    window = make_window(FakeEngine(steps=1))
    window.prompt_panel.prompt.setPlainText("a quilted bag")
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000) as blocker:
        window.generate_action.trigger()
    out = tmp_path / "out.png"
    export_png(str(out), window.session)
    meta = read_png_metadata(out)
    assert meta.request is not None and meta.request.prompt == "a quilted bag"
    assert meta.request.seed == blocker.args[0].request.seed


def test_export_ora_keeps_every_layer(make_window, qtbot, tmp_path):
    from studio.files.ora import import_ora
    from ui.exports import export_ora

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    ink = doc.add_layer("ink")
    doc.fill(ink.id, (10, 20, 30, 255))
    doc.set_layer(ink.id, opacity=0.5, visible=False)
    out = tmp_path / "layers.ora"
    export_ora(str(out), window.session)
    width, height, layers = import_ora(out)
    assert (width, height) == (64, 64) and [layer.name for layer in layers] == ["Background", "ink"]
    assert layers[1].opacity == 0.5 and not layers[1].visible
    assert np.array_equal(layers[1].pixels, ink.pixels)


def test_painter_shortcuts(make_window, qtbot):
    window = make_window(FakeEngine(steps=1))
    canvas = window.canvas
    canvas.setFocus()
    for key, tool in (
        (Qt.Key.Key_E, "eraser"),
        (Qt.Key.Key_I, "picker"),
        (Qt.Key.Key_M, "mask"),
        (Qt.Key.Key_B, "brush"),
    ):
        qtbot.keyClick(canvas, key)
        assert canvas.tool == tool
    size = canvas.brush.size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush.size > size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush.size < size
    qtbot.keyClick(canvas, Qt.Key.Key_1)
    assert canvas.zoom == 1.0
    qtbot.keyClick(canvas, Qt.Key.Key_F)
    assert canvas.zoom != 1.0 and canvas.doc_rect().width() <= canvas.width()
