"""The session: generate, cancel, failures, img2img/inpaint inputs, lineage, history, quit."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fake_engine import FakeEngine, Paced, fake_image, make_references
from session_fixtures import SIZE

from backend.events import StepEvent
from backend.images import Picture
from backend.patch_engine import PatchEngine
from studio.document import Document
from studio.session import HISTORY_SIZE, Session
from studio.settings import Settings


@pytest.fixture
def references(tmp_path):
    return make_references(tmp_path / "references")


class Seen:
    """What a session announced."""

    def __init__(self, session: Session) -> None:
        self.frames: list[StepEvent] = []
        self.errors: list[str] = []
        self.ended: list[str] = []
        self.results: list = []
        session.runs.frame.connect(self.frames.append)
        session.runs.error.connect(self.errors.append)
        session.runs.run_ended.connect(self.ended.append)
        session.runs.result_added.connect(self.results.append)


def paint_square(doc: Document, layer_id: str, rgba=(200, 30, 30, 255), at: int = 8, side: int = 8) -> None:
    patch = np.zeros((side, side, 4), dtype=np.uint8)
    patch[...] = rgba
    doc.paint(layer_id, at, at, patch)


def test_generate_streams_every_step_then_adds_an_undoable_layer_and_a_gallery_entry(qtbot, make_session):
    gates = [threading.Event() for _ in range(5)]
    engine = FakeEngine(gates=gates)
    session = make_session(engine)
    seen = Seen(session)
    session.runs.set_seed_locked(True)  # Generate keeps the seed it is given
    session.model.set(prompt="a gold ring with a blue stone", steps=5, seed=7)
    layers_before = len(session.document.layers)
    request = session.runs.generate()
    assert request is not None and session.runs.running
    for i, gate in enumerate(gates, start=1):
        gate.set()
        qtbot.waitUntil(lambda i=i: len(seen.frames) == i, timeout=5000)
        assert seen.frames[-1].step == i and seen.frames[-1].preview.shape == (SIZE, SIZE, 3)
    qtbot.waitUntil(lambda: seen.ended == ["done"], timeout=5000)
    assert not session.runs.running

    doc = session.document
    assert len(doc.layers) == layers_before + 1
    layer = doc.layers[-1]
    result = session.gallery.results[-1]
    assert seen.results == [result]
    assert layer.name == "a gold ring with a blue stone"
    assert layer.source == result.id
    assert np.array_equal(layer.pixels[..., :3], fake_image(request))
    assert result.request == request and result.request.seed == 7 and result.request.steps == 5
    assert (result.request.width, result.request.height) == (SIZE, SIZE)
    assert result.parents == () and not result.painted
    assert session.model.prompt_history[0] == "a gold ring with a blue stone"
    assert doc.undo()  # the result layer is one undoable step
    assert len(doc.layers) == layers_before


def test_cancel_mid_run_leaves_no_layer_and_no_entry_and_the_engine_takes_the_next_run(qtbot, make_session):
    gates = [threading.Event(), threading.Event()]
    engine = FakeEngine(steps=3, gates=gates)
    session = make_session(engine)
    seen = Seen(session)
    gates[0].set()
    session.model.set(prompt="cancel me")
    session.runs.generate()
    qtbot.waitUntil(lambda: len(seen.frames) == 1, timeout=5000)
    session.runs.cancel()
    qtbot.waitUntil(lambda: seen.ended == ["cancelled"], timeout=5000)
    assert len(session.document.layers) == 1 and session.gallery.results == []
    assert not session.runs.running and not session.host.busy

    gates[1].set()
    session.model.set(prompt="the next one")
    session.runs.generate()
    qtbot.waitUntil(lambda: seen.ended == ["cancelled", "done"], timeout=5000)
    assert [r.request.prompt for r in session.gallery.results] == ["the next one"]
    assert seen.errors == []


def test_cancel_before_the_engine_thread_takes_the_run_still_ends_it(qtbot, make_session):
    hold = threading.Event()  # a long step that looks at cancel only when it ends keeps the thread busy
    engine = FakeEngine(steps=1, hold=hold)
    session = make_session(engine)
    seen = Seen(session)
    try:
        session.runs.generate()
        qtbot.waitUntil(engine.running.is_set, timeout=5000)
        session.runs.generate()  # a second Generate: its run waits for the engine thread
        session.runs.cancel()  # Esc before the thread took it
        qtbot.waitUntil(lambda: seen.ended == ["cancelled"], timeout=5000)
        assert not session.runs.running  # the window's Cancel greys out, the progress bar goes
        with qtbot.waitSignal(session.host.idle, timeout=5000):  # after the first run's own "cancelled"
            hold.set()
    finally:
        hold.set()
    assert seen.ended == ["cancelled"] and seen.results == [] and len(session.document.layers) == 1


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"), RuntimeError("kaput")],
    ids=["oom", "runtime"],
)
def test_an_engine_that_raises_reports_and_loses_nothing(qtbot, make_session, error):
    engine = FakeEngine(steps=3, raise_at=2, error=error)
    session = make_session(engine)
    seen = Seen(session)
    doc = session.document
    ink = doc.add_layer("ink")
    paint_square(doc, ink.id)
    pixels = [layer.pixels.copy() for layer in doc.layers]
    session.runs.generate()
    qtbot.waitUntil(lambda: seen.ended == ["failed"], timeout=5000)
    assert len(seen.errors) == 1
    message = seen.errors[0]
    assert "Traceback" not in message
    if isinstance(error, torch.OutOfMemoryError):
        assert message.startswith("Out of memory") and "smaller size" in message
    else:
        assert "kaput" in message
    assert len(doc.layers) == len(pixels)
    assert all(np.array_equal(layer.pixels, px) for layer, px in zip(doc.layers, pixels, strict=True))
    assert len(doc.layers) == 2 and session.gallery.results == [] and not session.runs.running

    engine.raise_at = None  # the same session runs the next request
    session.runs.generate()
    qtbot.waitUntil(lambda: seen.ended == ["failed", "done"], timeout=5000)
    assert len(session.gallery.results) == 1


def test_bad_input_is_reported_before_anything_runs(qtbot, make_session):
    engine = FakeEngine()
    session = make_session(engine)
    seen = Seen(session)
    session.model.set(blend=0.5)  # a blend without a prompt B
    assert session.runs.generate() is None
    assert seen.errors and "prompt B" in seen.errors[0]
    session.model.set(blend=0.0)
    session.model.set_mode("inpaint")
    assert session.runs.generate() is None
    assert "mask" in seen.errors[-1]
    qtbot.wait(20)
    assert engine.started_runs == [] and not session.runs.running


def test_frames_of_a_superseded_run_never_reach_the_canvas(qtbot, make_session):
    gate = threading.Event()
    session = make_session(FakeEngine(steps=2, gates=[gate]))
    seen = Seen(session)
    old = session.runs.generate()
    new = session.runs.generate()
    assert old is not None and new is not None
    session.host.step.emit(StepEvent(old.request_id, 1, 2, np.zeros((SIZE, SIZE, 3), np.uint8), 0.1))
    assert seen.frames == []
    gate.set()
    qtbot.waitUntil(lambda: seen.ended == ["done"], timeout=5000)
    assert {f.request_id for f in seen.frames} == {new.request_id}
    assert [r.request.request_id for r in session.gallery.results] == [new.request_id]


def test_img2img_starts_from_the_visible_canvas_and_records_lineage(qtbot, make_session):
    engine = FakeEngine(steps=2)
    session = make_session(engine)
    seen = Seen(session)
    doc = session.document
    sketch = doc.add_layer("sketch")
    paint_square(doc, sketch.id)
    hidden = doc.add_layer("hidden")
    paint_square(doc, hidden.id, rgba=(0, 255, 0, 255), at=0, side=SIZE)
    doc.set_layer(hidden.id, visible=False)
    session.model.set_mode("img2img")
    session.model.set(prompt="brick", strength=0.5)
    first = session.runs.generate()
    assert first is not None
    assert first.init_image == Picture(doc.composite())
    assert first.init_image.pixels[12, 12].tolist() == [200, 30, 30]  # the sketch, not the hidden layer
    qtbot.waitUntil(lambda: len(seen.results) == 1, timeout=5000)
    one = seen.results[0]
    assert one.parents == (f"image:{first.init_image.digest[:16]}",) and not one.painted

    # Paint over the result and run again: the result is a parent, painted over in between.
    result_layer = doc.layers[-1]
    assert result_layer.source == one.id
    paint_square(doc, result_layer.id, rgba=(0, 0, 255, 255), at=0, side=4)
    second = session.runs.generate()
    assert second is not None and second.init_image == Picture(doc.composite())
    qtbot.waitUntil(lambda: len(seen.results) == 2, timeout=5000)
    two = seen.results[1]
    assert two.parents == (one.id,) and two.painted
    assert session.gallery.chain(two.id) == [two, one]


def test_inpaint_with_the_patch_engine_changes_only_masked_pixels(qtbot, make_session, references):
    session = make_session(PatchEngine())
    seen = Seen(session)
    doc = session.document
    sketch = doc.add_layer("sketch")
    paint_square(doc, sketch.id, rgba=(40, 90, 160, 255), at=0, side=SIZE)
    paint_square(doc, sketch.id, rgba=(230, 200, 40, 255), at=10, side=8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:16, 18:30] = 255
    doc.paint_mask(0, 0, mask)
    before = doc.composite()
    session.model.set_mode("inpaint")
    session.model.set(model=str(references), steps=4, strength=1.0, seed=3)
    request = session.runs.generate()
    assert request is not None and request.mask == Picture(mask)
    assert request.init_image == Picture(before)
    qtbot.waitUntil(lambda: seen.ended == ["done"], timeout=60000)
    assert seen.errors == []
    after = doc.composite()
    changed = np.any(after != before, axis=2)
    assert changed[mask > 0].mean() > 0.5  # the masked area was repainted ...
    near = np.zeros_like(mask, dtype=bool)
    near[1:19, 15:32] = True  # the mask's feathered edge (1.5 px at 32², blurred about 3 px out)
    assert not changed[~near].any()  # ... and nothing beyond its edge moved by even one level
    assert session.gallery.results[0].parents == (f"image:{request.init_image.digest[:16]}",)


def test_generate_with_the_patch_engine_paints_every_step(qtbot, make_session, references):
    engine = Paced(PatchEngine())
    session = make_session(engine)
    seen = Seen(session)
    session.runs.frame.connect(lambda _ev: engine.taken.release())
    session.model.set(model=str(references), steps=3, seed=5, prompt="texture")
    request = session.runs.generate()
    qtbot.waitUntil(lambda: seen.ended == ["done"], timeout=60000)
    assert [(f.step, f.total) for f in seen.frames] == [(1, 3), (2, 3), (3, 3)]
    assert all(f.request_id == request.request_id for f in seen.frames)
    result = session.gallery.results[0]
    assert result.request == request and result.extras["engine"] == "patch"
    assert result.attribution is not None and result.attribution.shape[:2] == (SIZE, SIZE)
    assert np.array_equal(session.document.layers[-1].pixels[..., :3], result.image)
    assert session.document.layers[-1].name == "texture"


def test_restore_puts_a_recipe_back_and_variations_record_it_as_parent(qtbot, make_session):
    session = make_session(FakeEngine(steps=1))
    seen = Seen(session)
    session.runs.set_seed_locked(True)
    session.model.set(prompt="leather", seed=11, guidance=3.0)
    session.runs.generate()
    qtbot.waitUntil(lambda: len(seen.results) == 1, timeout=5000)
    first = seen.results[0]
    session.model.set(prompt="something else", seed=99, guidance=9.0)
    session.runs.restore(first.id)
    assert (session.model.request.prompt, session.model.request.seed, session.model.request.guidance) == (
        "leather",
        11,
        3.0,
    )
    assert session.model.mode == "txt2img"
    session.model.set(variation_seed=5, variation_strength=0.3)
    session.runs.generate()
    qtbot.waitUntil(lambda: len(seen.results) == 2, timeout=5000)
    assert seen.results[1].parents == (first.id,)
    session.model.set(seed=12)  # a new seed: a new picture, not a variation
    session.runs.generate()
    qtbot.waitUntil(lambda: len(seen.results) == 3, timeout=5000)
    assert seen.results[2].parents == ()


def test_use_as_init_puts_a_result_on_the_canvas(qtbot, make_session):
    session = make_session(FakeEngine(steps=1))
    seen = Seen(session)
    session.runs.generate()
    qtbot.waitUntil(lambda: len(seen.results) == 1, timeout=5000)
    layer = session.runs.use_as_init(seen.results[0])
    assert layer is not None and layer.source == seen.results[0].id
    assert session.model.mode == "img2img"


def test_prompt_history_keeps_the_last_distinct_prompts_newest_first(qtbot, make_session, tmp_path):
    settings = Settings(str(tmp_path / "studio.ini"))
    session = make_session(FakeEngine(steps=1), settings=settings)
    for i in range(HISTORY_SIZE + 10):
        session.model.remember_prompt(f"prompt {i}")
    session.model.remember_prompt("prompt 55")  # again: moves to the front, not a duplicate
    history = session.model.prompt_history
    assert len(history) == HISTORY_SIZE == len(set(history))
    assert history[0] == "prompt 55" and history[1] == "prompt 59" and "prompt 9" not in history
    session.model.set(prompt="kept between runs", steps=9)
    assert session.shutdown(timeout=5)
    again = make_session(FakeEngine(steps=1), settings=Settings(str(tmp_path / "studio.ini")))
    assert again.model.prompt_history == history
    assert (again.model.request.prompt, again.model.request.steps) == ("kept between runs", 9)


def test_settings_keep_engine_options_and_survive_bad_values(tmp_path):
    path = str(tmp_path / "studio.ini")
    settings = Settings(path)
    assert settings.engine_options() == {} and settings.last_request is None
    settings.device = "cpu"
    settings.taesd_folder = "/models/taesd"
    settings.model_folders = ["/a", "/b", "/a"]
    settings.sync()
    again = Settings(path)
    assert again.model_folders == ["/a", "/b"]
    assert again.engine_options() == {
        "device": "cpu",
        "taesd": "/models/taesd",
        "model_folders": ("/a", "/b"),
    }
    again.set_value("session/last_request", "{not json")
    again.set_value("session/prompt_history", '{"a": 1}')
    assert again.last_request is None and again.prompt_history == []


def test_an_opened_project_history_replaces_the_session_history(qtbot, make_session):
    session = make_session(FakeEngine())
    session.model.set_prompt_history([" b ", "a", "b", "", "c"])
    assert session.model.prompt_history == ["b", "a", "c"]


def test_quit_during_a_run_stops_promptly_with_no_thread_left(qtbot):
    gate = threading.Event()  # never opened: only the cancel ends this run
    engine = FakeEngine(steps=3, gates=[gate])
    session = Session(engine, document=Document(SIZE, SIZE))
    session.runs.generate()
    qtbot.waitUntil(engine.running.is_set, timeout=5000)
    t0 = time.monotonic()
    assert session.shutdown(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert not session.host.is_alive()
    assert session.gallery.results == [] and len(session.document.layers) == 1


def test_quit_during_a_real_run_stops_within_a_step(qtbot, references):
    session = Session(PatchEngine(), document=Document(64, 64))
    frames: list[StepEvent] = []
    session.runs.frame.connect(frames.append)
    session.model.set(model=str(references), steps=60)
    session.runs.generate()
    qtbot.waitUntil(lambda: len(frames) >= 1, timeout=60000)
    t0 = time.monotonic()
    assert session.shutdown(timeout=10)
    assert time.monotonic() - t0 < 3.0
    assert not session.host.is_alive()
    assert session.gallery.results == [] and len(session.document.layers) == 1
