"""The window's sketch controls (Structure, the colour table, the prompt's references) and the attribution
overlay, on real widgets and the real patch engine."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QComboBox

from backend.patch_engine import PatchEngine

SIZE = 32


def sketch_window(make_window, qtbot, prompt="gold leather"):
    window = make_window(PatchEngine(max_keys=1024), size=SIZE)
    session, panel = window.session, window.sketch_panel
    doc = session.document
    layer = doc.add_layer("sketch")
    pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    pixels[4:28, 3:15] = (230, 190, 40, 255)
    pixels[4:28, 17:29] = (110, 65, 30, 255)
    doc.paint(layer.id, 0, 0, pixels)
    session.model.set_mode("img2img")
    session.model.set(prompt=prompt, steps=4, seed=3)
    qtbot.waitUntil(lambda: panel._refs is not None, timeout=20000)
    qtbot.waitUntil(lambda: panel.table.rowCount() == 3)
    return window


def picker(panel, hex_colour: str) -> QComboBox:
    row = [c.hex for c in panel.colours].index(hex_colour)
    widget = panel.table.cellWidget(row, 2)
    assert isinstance(widget, QComboBox)
    return widget


def test_the_prompts_references_and_shares_show_before_a_run(make_window, qtbot):
    window = sketch_window(make_window, qtbot, prompt="gold ring")
    panel = window.sketch_panel
    assert panel.references.text() == "hammered_gold 50%, rose_gold 50%"
    assert "'ring'" in panel.unmatched.text() and not panel.unmatched.isHidden()
    window.session.model.set(prompt="leather")
    assert "pebbled_leather 25%" in panel.references.text() and "suede 25%" in panel.references.text()
    assert panel.unmatched.isHidden()


def test_colour_table_lists_the_sketch_colours_and_pins_a_material(make_window, qtbot):
    window = sketch_window(make_window, qtbot)
    panel, model = window.sketch_panel, window.session.model
    assert {c.hex for c in panel.colours} == {"#ffffff", "#6e411e", "#e6be28"}
    assert [c.hex for c in panel.colours if c.background] == ["#ffffff"]
    assert picker(panel, "#e6be28").currentText() == "Auto: hammered_gold"
    assert picker(panel, "#6e411e").currentText() == "Auto: pebbled_leather"
    brown = picker(panel, "#6e411e")
    brown.setCurrentIndex(brown.findData("suede"))
    assert model.request.colour_pins == (("#6e411e", "suede"),)
    # A recipe's pins (or undoing) show in the table; "Keep as drawn" pins the colour to the sketch.
    model.set(colour_pins=(("#e6be28", "sketch"),))
    assert picker(panel, "#e6be28").currentText() == "Keep as drawn"
    assert picker(panel, "#6e411e").currentText() == "Auto: pebbled_leather"
    picker(panel, "#e6be28").setCurrentIndex(0)
    assert model.request.colour_pins == ()
    # A new stroke in another colour shows up once the person stops painting.
    doc = window.session.document
    blue = np.zeros((6, 6, 4), np.uint8)
    blue[...] = (40, 60, 200, 255)
    doc.paint(doc.layers[-1].id, 1, 1, blue)
    qtbot.waitUntil(lambda: "#283cc8" in [c.hex for c in panel.colours], timeout=5000)


def test_structure_sliders_edit_the_request_and_follow_it(make_window, qtbot):
    window = sketch_window(make_window, qtbot)
    panel, model = window.sketch_panel, window.session.model
    panel.structure.slider.setValue(250)
    assert model.request.structure == 0.25
    assert "larger than 2 px" in panel.structure_size.text()  # side/32 · 2^(4·0.25) at 32²
    model.set(structure_steps=0.4)
    assert panel.structure_steps.value() == 0.4
    model.set_mode("txt2img")
    assert not panel.structure.isEnabled() and not panel.table.isEnabled()


def test_attribution_overlay_shows_the_newest_result_with_a_legend_and_the_name_under_the_cursor(
    make_window, qtbot
):
    window = sketch_window(make_window, qtbot)
    session, canvas, action = window.session, window.canvas, window.show_attribution_action
    assert not action.isEnabled()
    session.runs.generate()
    qtbot.waitUntil(lambda: len(session.gallery.results) == 1, timeout=60000)
    assert action.isEnabled() and not canvas.overlay_shown
    action.trigger()
    assert canvas.overlay_shown
    names = {text.split()[0] for _rgb, text in canvas._legend}
    assert names == {"sketch", "hammered_gold", "pebbled_leather"}
    # Over the yellow stroke the status bar names its material.
    rect = canvas.doc_rect()
    spot = QPoint(int(rect.left() + rect.width() * 9 / SIZE), int(rect.top() + rect.height() * 16 / SIZE))
    QTest.mouseMove(canvas, spot)
    qtbot.waitUntil(lambda: window.status.message.text().startswith("hammered_gold ("))
    action.trigger()
    assert not canvas.overlay_shown
