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
    window.generate_action.trigger()
    qtbot.waitUntil(lambda: runs.running)
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
