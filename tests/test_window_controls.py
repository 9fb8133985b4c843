"""Controls behave as a person expects (issue 8 §2): typed values, runs that would change nothing,
where results land, the Blend slider, progress and errors in the status bar, Esc, thumbnails, the mask
overlay, the shortcut list and the layers' context menu."""

from __future__ import annotations

from fake_engine import FakeEngine


def test_typing_in_strength_and_guidance_gives_the_typed_value(make_window, qtbot):
    window = make_window(FakeEngine(steps=1))
    panel, model = window.prompt_panel, window.session.model
    model.set_mode("img2img")  # strength is enabled from the canvas only
    for spin, typed, value, name in (
        (panel.strength, "0.45", 0.45, "strength"),
        (panel.guidance, "5.5", 5.5, "guidance"),
        (panel.guidance, "12", 12.0, "guidance"),
    ):
        spin.setFocus()
        spin.selectAll()
        qtbot.keyClicks(spin, typed)
        assert spin.text() == typed and spin.value() == value
        assert getattr(model.request, name) == value  # each keystroke reached the model on the way
        qtbot.keyClick(spin, "\t")  # leaving the field shows the value in the field's own format
    assert panel.guidance.text() == "12.0" and window.slider_panel.guidance.value() == 12.0


def test_a_run_that_would_change_nothing_adds_nothing_and_says_why(make_window, qtbot):
    engine = FakeEngine(steps=1)
    window = make_window(engine)
    session = window.session
    doc, runs = session.document, session.runs
    session.model.set_mode("img2img")
    session.model.set(strength=0.0)
    layers = len(doc.layers)
    window.generate_action.trigger()
    assert not runs.running and "Strength is 0" in window.status.message.text()
    window.live_action.setChecked(True)  # nor does Live run it
    assert not runs.running and "Strength is 0" in window.status.message.text()
    qtbot.wait(50)
    assert engine.started_runs == [] and len(doc.layers) == layers and session.gallery.results == []
    session.model.set(strength=0.3)  # a value that changes something runs at once
    qtbot.waitUntil(lambda: len(session.gallery.results) == 1)


def test_a_result_lands_on_top_where_its_preview_was_shown(make_window, qtbot):
    import numpy as np
    from test_window import centre_colour

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    ink = doc.add_layer("ink")
    doc.fill(ink.id, (20, 40, 60, 255))  # an opaque layer above the background
    doc.set_active(doc.layers[0].id)  # the person selected the background
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000) as blocker:
        window.generate_action.trigger()
    result = blocker.args[0]
    top = doc.layers[-1]
    assert top.source == result.id and top.visible and top.opacity == 1.0 and doc.active_id == top.id
    window.canvas.actual_size()
    shown = centre_colour(window)
    expected = result.image[32, 32]
    assert np.abs(np.array([shown.red(), shown.green(), shown.blue()]) - expected).max() <= 1


def test_the_blend_slider_waits_for_a_prompt_b_and_says_so(make_window, qtbot):
    from PySide6.QtCore import Qt

    window = make_window(FakeEngine(steps=1))
    sliders, model = window.slider_panel, window.session.model
    assert not sliders.blend.isEnabled() and "Type a Prompt B first" in sliders.blend.toolTip()
    sliders.prompt_b.setFocus()
    qtbot.keyClicks(sliders.prompt_b, "a dragon")
    assert model.request.prompt_b == "a dragon"  # typed is in the request, no Enter needed
    assert sliders.blend.isEnabled() and "first" not in sliders.blend.toolTip()
    sliders.blend.slider.setValue(400)
    assert model.request.blend == 0.4
    sliders.prompt_b.selectAll()
    qtbot.keyClick(sliders.prompt_b, Qt.Key.Key_Backspace)
    assert not sliders.blend.isEnabled() and (model.request.prompt_b, model.request.blend) == ("", 0.0)
    assert sliders.blend.value() == 0.0
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()  # no "a blend needs a prompt B" error
    model.set(prompt_b="gold", blend=0.7)  # a restored recipe with a prompt B
    assert sliders.blend.isEnabled() and sliders.blend.value() == 0.7


def test_the_progress_bar_shows_only_real_totals_and_resets_after_a_cancel(make_window, qtbot):
    import threading

    gates = [threading.Event() for _ in range(5)]
    window = make_window(FakeEngine(gates=gates))
    runs, bar = window.session.runs, window.status.progress
    window.session.model.set(steps=5)
    texts: list[str] = []
    runs.progress.connect(lambda *_: texts.append(bar.text()))
    with qtbot.waitSignal(runs.run_started, timeout=5000):
        window.generate_action.trigger()
    assert bar.isVisible() and bar.text() == ""  # busy until the engine says how many steps
    for i, gate in enumerate(gates[:2], start=1):
        gate.set()
        qtbot.waitUntil(lambda i=i: len(texts) == i)
    assert texts == ["step 1 / 5", "step 2 / 5"]
    with qtbot.waitSignal(runs.run_ended, timeout=5000):
        window.cancel_action.trigger()
    assert not bar.isVisible() and bar.text() == "" and window.status.timing.text() == ""
    for gate in gates:
        gate.clear()  # the next run waits before its first step
    with qtbot.waitSignal(runs.run_started, timeout=5000):
        window.generate_action.trigger()
    assert bar.isVisible() and bar.text() == ""  # not the cancelled run's "step 2 / 5"
    for gate in gates:
        gate.set()
    qtbot.waitUntil(lambda: not runs.running)
    assert not bar.isVisible()


def test_a_red_error_clears_after_the_next_successful_run(make_window, qtbot):
    engine = FakeEngine(steps=2, raise_at=1, error=RuntimeError("kaput"))
    window = make_window(engine)
    message = window.status.message
    with qtbot.waitSignal(window.session.runs.error, timeout=5000):
        window.generate_action.trigger()
    assert "kaput" in message.text() and "c0392b" in message.styleSheet()
    window.error_box.accept()
    engine.raise_at = None
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    qtbot.waitUntil(lambda: not window.session.runs.running)
    assert "kaput" not in message.text() and message.styleSheet() == ""


def test_escape_cancels_only_when_no_popup_or_text_field_takes_it(make_window, qtbot):
    import threading

    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    gate = threading.Event()  # the run waits before its first step until cancelled
    window = make_window(FakeEngine(steps=2, gates=[gate]))
    runs, panel = window.session.runs, window.prompt_panel
    with qtbot.waitSignal(runs.run_started, timeout=5000):  # the engine thread took it: a run in progress
        window.generate_action.trigger()
    cancels: list[bool] = []
    window.cancel_action.triggered.connect(lambda *_: cancels.append(True))

    for field in (panel.prompt, panel.negative, panel.guidance, window.slider_panel.prompt_b):
        field.setFocus()
        qtbot.keyClick(field, Qt.Key.Key_Escape)  # leaves the text field, cancels nothing
        assert cancels == [] and window.canvas.hasFocus()

    panel.mode.setFocus()
    panel.mode.showPopup()
    qtbot.waitUntil(lambda: QApplication.activePopupWidget() is not None)
    popup = QApplication.activePopupWidget()
    qtbot.keyClick(popup.focusWidget() or popup, Qt.Key.Key_Escape)  # closes the list only
    qtbot.waitUntil(lambda: QApplication.activePopupWidget() is None)
    assert cancels == [] and runs.running

    with qtbot.waitSignal(runs.run_ended, timeout=5000) as ended:
        qtbot.keyClick(window.canvas, Qt.Key.Key_Escape)
    assert ended.args == ["cancelled"]


def test_selected_thumbnails_show_their_true_colours(make_window, qtbot):
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    ink = doc.add_layer("ink")
    doc.fill(ink.id, (200, 120, 40, 255))
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    gallery = window.gallery_panel.list
    gallery.setCurrentRow(0)
    layers = window.layers_panel.list
    layers.setCurrentRow(1)  # the ink layer (top first: the result, then ink)
    for item, size in ((layers.currentItem(), 40), (gallery.currentItem(), 96)):
        assert item.isSelected()
        icon = item.icon()
        normal = icon.pixmap(QSize(size, size), QIcon.Mode.Normal).toImage()
        for mode in (QIcon.Mode.Selected, QIcon.Mode.Active):
            assert icon.pixmap(QSize(size, size), mode).toImage() == normal
    ink_colour = (
        layers.currentItem().icon().pixmap(QSize(40, 40), QIcon.Mode.Selected).toImage().pixelColor(20, 20)
    )
    assert (ink_colour.red(), ink_colour.green(), ink_colour.blue()) == (200, 120, 40)


def test_a_text_to_image_png_records_no_denoising_strength(make_window, qtbot, tmp_path):
    from studio.files.pngmeta import read_png_metadata
    from ui.exports import export_png

    window = make_window(FakeEngine(steps=1))
    session = window.session
    session.model.set(strength=0.5, prompt="a felt hat")  # a strength set earlier, for image to image
    for mode, expected in (("txt2img", False), ("img2img", True)):
        session.model.set_mode(mode)
        with qtbot.waitSignal(session.runs.result_added, timeout=5000):
            window.generate_action.trigger()
        out = tmp_path / f"{mode}.png"
        export_png(str(out), session)
        meta = read_png_metadata(out)
        assert ("Denoising strength" in meta.parameters) is expected, meta.parameters
        assert meta.request.strength == 0.5  # the exact recipe keeps the panel's value either way


def test_the_mask_overlay_toggles_and_hides_after_an_inpaint(make_window, qtbot):
    import numpy as np
    from test_window import centre_colour

    window = make_window(FakeEngine(steps=1))
    doc, session, toggle = window.document, window.session, window.show_mask_action
    window.canvas.actual_size()
    doc.paint_mask(16, 16, np.full((32, 32), 255, np.uint8))  # the middle of the 64² canvas
    white = (255, 255, 255)

    def shown() -> tuple[int, int, int]:
        colour = centre_colour(window)
        return colour.red(), colour.green(), colour.blue()

    assert toggle.isChecked() and shown() != white  # red over white
    toggle.trigger()
    assert not toggle.isChecked() and shown() == white  # hidden: the canvas as it is
    toggle.trigger()
    assert shown() != white
    session.model.set_mode("inpaint")
    with qtbot.waitSignal(session.runs.result_added, timeout=5000) as blocker:
        window.generate_action.trigger()
    assert not toggle.isChecked()  # hidden after the inpaint: the repainted area shows
    expected = blocker.args[0].image[32, 32]
    assert np.abs(np.array(shown()) - expected).max() <= 1
    assert doc.mask.any()  # hidden, not cleared: Generate again repaints the same area
    window.brush_bar.tool_actions["mask"].trigger()  # back to the mask brush: it shows again
    assert toggle.isChecked() and shown() != tuple(expected)


def test_help_lists_every_shortcut_from_the_actions_themselves(make_window, qtbot):
    from PySide6.QtGui import QAction, QKeySequence

    from ui.shortcuts import action_name, keys_text

    window = make_window(FakeEngine(steps=1))
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    assert window.shortcuts_action in help_menu.actions()
    window.shortcuts_action.trigger()
    dialog = window.shortcuts_dialog
    assert dialog is not None and dialog.isVisible()
    listed = {(name, keys) for _menu, name, keys in dialog.rows()}
    actions = [a for a in window.findChildren(QAction) if a.shortcuts()]
    assert len(actions) >= 25
    for action in actions:
        assert (action_name(action), keys_text(action)) in listed, action.text()
    assert ("Cancel", "Esc") in listed and ("Undo", "Ctrl+Z") in listed and ("Mask", "M") in listed
    window.document.add_layer("ink")  # Undo's text now names the step; the list still says Undo
    window.shortcuts_action.trigger()
    assert ("Edit", "Undo", "Ctrl+Z") in window.shortcuts_dialog.rows()
    # Qt runs neither of two actions that share a key: every key does one thing.
    keys = [k.toString() for a in actions for k in a.shortcuts()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    # Generated, not kept by hand: a new action shows up the next time the list opens.
    extra = QAction("Flip canvas", window)
    extra.setShortcut(QKeySequence("Ctrl+Shift+H"))
    window.addAction(extra)
    window.shortcuts_action.trigger()
    assert ("Other", "Flip canvas", "Ctrl+Shift+H") in window.shortcuts_dialog.rows()


def test_the_layers_context_menu_renames_duplicates_deletes_and_merges_down(make_window, qtbot):
    import numpy as np

    window = make_window(FakeEngine(steps=1))
    doc, panel = window.document, window.layers_panel
    ink = doc.add_layer("ink")
    half = np.zeros((64, 64, 4), np.uint8)
    half[:, :32] = (200, 20, 20, 255)
    doc.paint(ink.id, 0, 0, half)
    doc.set_layer(ink.id, opacity=0.5)
    before = doc.composite()

    def menu(row: int) -> dict:
        return {a.text(): a for a in panel.menu_for(panel.list.item(row)).actions() if a.text()}

    background = menu(1)  # the bottom row: nothing below it
    assert not background["Merge down"].isEnabled() and "bottom" in background["Merge down"].toolTip()
    menu(0)["Duplicate"].trigger()
    assert [la.name for la in doc.layers] == ["Background", "ink", "ink copy"]
    menu(0)["Delete"].trigger()
    assert [la.name for la in doc.layers] == ["Background", "ink"]
    menu(0)["Rename"].trigger()  # opens the row's editor, as a double-click does
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QLineEdit

    editor = next(e for e in panel.list.findChildren(QLineEdit) if e.isVisible())
    editor.selectAll()
    qtbot.keyClicks(editor, "red half")
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: doc.layers[1].name == "red half")  # the view commits on its next turn

    undo_depth = len(doc.history.done)
    menu(0)["Merge down"].trigger()
    assert [la.name for la in doc.layers] == ["Background"] and len(doc.history.done) == undo_depth + 1
    assert doc.undo_label == "Merge down"
    assert np.abs(doc.composite().astype(int) - before.astype(int)).max() <= 1  # looks the same
    window.undo_action.trigger()  # one step brings both layers back as they were
    assert [la.name for la in doc.layers] == ["Background", "red half"]
    assert doc.layers[1].opacity == 0.5 and np.array_equal(doc.layers[1].pixels, half)
    assert np.array_equal(doc.composite(), before)
    doc.set_layer(doc.layers[1].id, visible=False)
    hidden = menu(0)["Merge down"]
    assert not hidden.isEnabled() and "Show" in hidden.toolTip()


def test_merge_down_keeps_the_picture_for_any_alpha_and_opacity_and_survives_a_crash(tmp_path, qtbot):
    import numpy as np

    from studio.document import Document
    from studio.files.journal import Journal, find_recovery, recover
    from studio.gallery import Gallery

    rng = np.random.default_rng(3)
    doc = Document(24, 16)
    journal = Journal(doc, Gallery(), tmp_path, history=lambda: [])
    journal.start()
    for opacity in (1.0, 0.7, 0.25):
        layer = doc.add_layer(f"{opacity}")
        doc.paint(layer.id, 0, 0, rng.integers(0, 256, (16, 24, 4), dtype=np.uint8))
        doc.set_layer(layer.id, opacity=opacity)
    corner = doc.add_layer("corner")  # a small layer at its own offset
    doc.paint(corner.id, 17, 9, rng.integers(0, 256, (5, 6, 4), dtype=np.uint8))
    before = doc.composite()
    doc.merge_down(corner.id)
    doc.merge_down(doc.layers[3].id)
    doc.merge_down(doc.layers[2].id)
    assert len(doc.layers) == 2 and doc.layers[1].opacity == 1.0
    assert np.abs(doc.composite().astype(int) - before.astype(int)).max() <= 2
    journal.abandon()  # as a crash leaves it
    found = find_recovery(tmp_path)
    assert found is not None
    recovered = recover(found)
    assert [la.name for la in recovered.layers] == [la.name for la in doc.layers]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(recovered.layers, doc.layers, strict=True))
    journal.close()


def test_after_opening_or_restoring_the_window_says_plainly_that_history_starts_there(
    make_window, qtbot, tmp_path
):
    import numpy as np
    from test_window import drop_file

    from studio.document import Document
    from studio.files.journal import Journal, find_recovery
    from studio.files.project import save_project
    from studio.gallery import Gallery

    saved = Document(48, 32)
    saved.add_layer("ink", np.full((32, 48, 3), 40, dtype=np.uint8))
    path = tmp_path / "fox.studio"
    save_project(path, saved)
    window = make_window(FakeEngine(steps=1))
    doc, undo = window.document, window.undo_action
    drop_file(window, path)
    assert not undo.isEnabled() and "history starts" in undo.text() and "fox.studio" in undo.text()
    assert "cannot be undone" in undo.toolTip()
    assert "undo history starts here" in window.status.message.text()
    doc.paint(doc.active_id, 0, 0, np.full((4, 4, 4), 255, np.uint8))
    assert undo.isEnabled() and undo.text() == "Undo Paint"
    undo.trigger()
    assert not undo.isEnabled() and "history starts" in undo.text()

    crashed = Document(40, 24)  # work a crash interrupted
    journal = Journal(crashed, Gallery(), tmp_path / "data", history=lambda: [])
    journal.start()
    crashed.add_layer("lost and found")
    journal.abandon()
    found = find_recovery(tmp_path / "data")
    assert found is not None and window.project_actions.restore(found)
    journal.close()
    assert [la.name for la in doc.layers] == ["Background", "lost and found"]
    assert not undo.isEnabled() and "history starts at the restored work" in undo.text()
    assert "undo history starts here" in window.status.message.text()


def test_a_layer_thumbnail_shows_where_an_offset_layer_lies_on_the_canvas(make_window, qtbot):
    import numpy as np
    from PySide6.QtCore import QSize

    from studio.commands import AddLayer
    from studio.layers import Layer

    window = make_window(FakeEngine(steps=1))  # a 64×64 canvas
    doc = window.document
    corner = np.zeros((16, 16, 4), np.uint8)
    corner[...] = (220, 20, 20, 255)
    doc.push(AddLayer(Layer("corner", corner, x=48, y=0), len(doc.layers)))  # as an opened .ora places it
    item = window.layers_panel.list.item(0)  # the top layer
    assert item.text() == "corner"
    thumb = item.icon().pixmap(QSize(64, 64)).toImage()
    colour = lambda x, y: thumb.pixelColor(x, y).getRgb()[:3]  # noqa: E731
    assert colour(56, 8) == (220, 20, 20)  # its own corner of the canvas
    assert colour(8, 8) == colour(8, 56) == colour(56, 56) == (255, 255, 255)  # nothing elsewhere


def test_the_guidance_slider_and_spin_box_cover_the_same_range(make_window, qtbot):
    from ui.slider_panel import TICKS

    window = make_window(FakeEngine(steps=1))
    spin, slider, model = window.prompt_panel.guidance, window.slider_panel.guidance, window.session.model
    spin.setValue(30.0)  # typed past the slider's old end (20): the slider follows it, not pinned
    assert model.request.guidance == 30.0 and slider.value() == 30.0
    slider.slider.setValue(TICKS)  # dragged to the slider's end: the spin box's end
    assert model.request.guidance == spin.maximum() and spin.value() == spin.maximum()
    slider.slider.setValue(0)
    assert model.request.guidance == spin.minimum() == 0.0


def test_escape_in_a_floating_panel_leaves_the_field_or_cancels(make_window, qtbot):
    import threading

    from PySide6.QtCore import Qt

    gate = threading.Event()  # the run waits before its first step until cancelled
    window = make_window(FakeEngine(steps=2, gates=[gate]))
    runs, panel, dock = window.session.runs, window.prompt_panel, window.docks["prompt"]
    dock.setFloating(True)  # the person dragged the prompt panel out of the window
    with qtbot.waitSignal(runs.run_started, timeout=5000):
        window.generate_action.trigger()
    cancels: list[bool] = []
    window.cancel_action.triggered.connect(lambda *_: cancels.append(True))

    dock.activateWindow()
    qtbot.waitUntil(dock.isActiveWindow)
    panel.negative.setFocus()
    qtbot.keyClick(panel.negative, Qt.Key.Key_Escape)  # leaves the field for the canvas, cancels nothing
    qtbot.waitUntil(window.canvas.hasFocus)
    assert cancels == [] and runs.running and not panel.negative.hasFocus()

    dock.activateWindow()
    qtbot.waitUntil(dock.isActiveWindow)
    panel.tiling.setFocus()  # not a text field: Esc there is the person's "stop"
    with qtbot.waitSignal(runs.run_ended, timeout=5000) as ended:
        qtbot.keyClick(panel.tiling, Qt.Key.Key_Escape)
    assert ended.args == ["cancelled"] and cancels == [True]


def test_a_stroke_redraws_only_its_own_layer_thumbnail(make_window, qtbot, monkeypatch):
    import numpy as np

    import ui.layers_panel

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    for i in range(4):
        doc.add_layer(f"ink {i}")
    made: list[str] = []
    original = ui.layers_panel.layer_icon
    monkeypatch.setattr(
        ui.layers_panel, "layer_icon", lambda layer, *a: (made.append(layer.name), original(layer, *a))[1]
    )
    doc.paint(doc.active_id, 4, 4, np.full((8, 8, 4), 200, np.uint8))
    assert made == ["ink 3"]  # not one thumbnail per layer for every stroke
    made.clear()
    doc.set_layer(doc.layers[1].id, opacity=0.5)  # the thumbnail shows pixels, not opacity
    assert made == []
