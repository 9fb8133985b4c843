"""The request model and the run controller apart: a signal per field, a slider tick redraws only its own
widgets, the controller owns the seed policy and Live, and one Generate is one run."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from fake_engine import FakeEngine, make_references
from PySide6.QtWidgets import QWidget

from backend.request import Request
from studio.request_model import RequestModel, field_names


def watch_every_field(model: RequestModel) -> Counter:
    """Count the emissions of every field's signal, by name."""
    seen: Counter = Counter()
    for name in field_names():
        model.field(name).connect(lambda _value, name=name: seen.update([name]))
    return seen


def test_an_edit_emits_only_the_signals_of_the_fields_it_changed(qtbot):
    model = RequestModel()
    seen = watch_every_field(model)
    values: list[float] = []
    model.field("guidance").connect(values.append)
    engine_group: list[Request] = []
    model.group("engine", "model").connect(engine_group.append)
    changed: list[frozenset] = []
    model.changed.connect(changed.append)

    model.set(guidance=3.5)
    assert seen == Counter({"guidance": 1}) and values == [3.5]
    assert changed == [frozenset({"guidance"})] and engine_group == []

    model.set(guidance=3.5, steps=model.request.steps)  # equal values: nothing at all
    assert seen == Counter({"guidance": 1}) and len(changed) == 1

    model.set(engine="diffusers", model="/models/sd", guidance=4.0)
    assert seen == Counter({"guidance": 2, "engine": 1, "model": 1})
    assert len(engine_group) == 1 and engine_group[0].model == "/models/sd"  # a group: once per edit

    model.set_mode("img2img")
    model.set_mode("img2img")
    assert seen["mode"] == 1 and changed[-1] == frozenset({"mode"})


def test_unknown_fields_and_canvas_inputs_are_refused(qtbot):
    model = RequestModel()
    with pytest.raises(ValueError, match="no such field: guidnace"):
        model.field("guidnace")
    with pytest.raises(ValueError, match="no such field"):
        model.group("engine", "modle")
    with pytest.raises(ValueError, match="come from the document"):
        model.set(init_image=None)
    with pytest.raises(ValueError, match="unknown mode"):
        model.set_mode("outpaint")


def qt_calls_on_widgets(action) -> Counter:  # noqa: ANN001 - a no-argument callable
    """Run `action` and count the Qt methods it calls on widgets, by widget (the cost of redrawing).

    Profiling counts every call into a C function, whatever the code path: a panel that re-shows all its
    widgets on every change cannot hide from it.
    """
    calls: Counter = Counter()

    def profile(_frame, event, arg) -> None:  # noqa: ANN001
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, QWidget):
                calls[owner] += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def test_a_slider_tick_redraws_only_the_widgets_of_its_own_field(make_window, qtbot, tmp_path):
    window = make_window(FakeEngine(steps=1))
    model = window.session.model
    model.set(model=str(make_references(tmp_path / "references", count=6)))
    sliders = window.slider_panel
    qtbot.waitUntil(lambda: len(sliders.reference_sliders) == 6)  # read on a worker thread
    assert sliders.patch_box.isVisible()
    seen = watch_every_field(model)

    locality = sliders.locality.slider
    calls = qt_calls_on_widgets(lambda: locality.setValue(locality.value() + 100))
    assert seen == Counter({"locality": 1})
    touched = {w for w in calls if w is not locality}
    own = sliders.locality
    assert touched and all(w is own or own.isAncestorOf(w) for w in touched), touched
    assert sum(calls.values()) <= 6, calls  # the tick, the label and the slider: not every panel

    # Guidance shows in two places, the slider and the prompt panel's spin box: both, and nothing else.
    guidance = sliders.guidance.slider
    calls = qt_calls_on_widgets(lambda: guidance.setValue(guidance.value() + 50))
    allowed = (sliders.guidance, window.prompt_panel.guidance)
    assert all(any(w is a or a.isAncestorOf(w) for a in allowed) for w in calls), set(calls)
    assert any(
        window.prompt_panel.guidance.isAncestorOf(w) or w is window.prompt_panel.guidance for w in calls
    )
    assert seen == Counter({"locality": 1, "guidance": 1})

    # A reference weight redraws its own slider only, not the other five.
    first, *others = sliders.reference_sliders.values()
    calls = qt_calls_on_widgets(lambda: first.slider.setValue(700))
    assert seen["reference_weights"] == 1
    assert not any(o is w or o.isAncestorOf(w) for o in others for w in calls)


def test_generate_rolls_a_fresh_seed_unless_it_is_locked(make_session, qtbot):
    session = make_session(FakeEngine(steps=1))
    runs, model = session.runs, session.model
    model.set(seed=5)
    seeds = set()
    for _ in range(3):
        with qtbot.waitSignal(runs.run_ended, timeout=5000):
            request = runs.generate()
        seeds.add(request.seed)
        assert model.request.seed == request.seed  # the panels show the seed that ran
    assert len(seeds) == 3 and 5 not in seeds
    runs.set_seed_locked(True)
    model.set(seed=5)
    with qtbot.waitSignal(runs.run_ended, timeout=5000):
        assert runs.generate().seed == 5


def test_one_generate_with_live_on_submits_exactly_one_run(make_window, qtbot):
    engine = FakeEngine(steps=2)
    window = make_window(engine)
    runs = window.session.runs
    window.live_action.setChecked(True)
    qtbot.waitUntil(
        lambda: not runs.running and not runs.pending and len(window.session.gallery.results) == 1
    )
    submitted: list[Request] = []
    runs.submitted.connect(submitted.append)
    with qtbot.waitSignal(runs.result_added, timeout=5000) as blocker:
        window.generate_action.trigger()  # a fresh seed, and its run
    qtbot.waitUntil(lambda: not runs.running and not runs.pending)
    assert len(submitted) == 1 and blocker.args[0].request.seed == submitted[0].seed
