"""Live re-rendering: bursts coalesce, frames keep arriving, the last image matches the last values."""

from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
from fake_engine import FakeEngine, fake_image, make_references
from session_fixtures import SIZE

from backend.events import StepEvent
from backend.patch_engine import PatchEngine
from backend.request import Request
from studio.session import Session


def settle(qtbot, session: Session) -> None:
    """Wait until nothing runs or waits."""
    qtbot.waitUntil(lambda: not session.runs.running and not session.runs.pending, timeout=10000)


def burst(session: Session, start: int, count: int = 100) -> None:
    """`count` slider changes in one go, as a fast drag delivers them."""
    for i in range(start, start + count):
        session.model.set(guidance=round(1.0 + (i % 400) * 0.1, 1), variation_strength=(i % 100) / 100)


def count(kind: type) -> int:
    gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


def test_a_burst_starts_few_runs_and_ends_on_the_final_values(qtbot, make_session, tmp_path):
    references = str(make_references(tmp_path / "references"))
    session = make_session(PatchEngine())
    started: list[Request] = []
    session.host.started.connect(started.append)
    session.model.set(model=references, steps=2, seed=4, variation_seed=9)
    session.runs.set_live(True)
    for i in range(100):  # a fast drag of two sliders
        session.model.set(variation_strength=i / 100, locality=0.3 + i / 500)
    settle(qtbot, session)
    assert len(started) <= 3, len(started)
    final = session.model.request
    assert (final.variation_strength, final.locality) == (0.99, 0.3 + 99 / 500)
    result = session.gallery.results[-1]
    assert result.request == final.replace(width=SIZE, height=SIZE)
    assert np.array_equal(session.document.layers[-1].pixels[..., :3], result.image)

    # A fresh engine run with the final values gives the same image.
    fresh = list(PatchEngine().generate(final.replace(width=SIZE, height=SIZE), threading.Event()))
    assert np.array_equal(fresh[-1].image, result.image)


def test_bursts_coalesce_on_the_fake_engine_too_and_do_not_grow_memory(qtbot, make_session):
    engine = FakeEngine(steps=4)
    session = make_session(engine)
    session.model.set(prompt="stone", variation_seed=1)
    session.runs.set_live(True)
    burst(session, 0)
    settle(qtbot, session)
    assert len(engine.started_runs) <= 3, len(engine.started_runs)
    assert np.array_equal(session.document.layers[-1].pixels[..., :3], fake_image(session.model.request))
    engine.started_runs.clear()
    engine.finished_runs.clear()
    requests, frames = count(Request), count(StepEvent)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for round_ in range(1, 6):
            burst(session, round_ * 100)
            settle(qtbot, session)
            engine.started_runs.clear()
            engine.finished_runs.clear()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    results = len(session.gallery.results)
    # Nothing but the new gallery entries is kept: no pile of requests or frames.
    assert count(Request) - requests <= 5 and results <= 6
    assert count(StepEvent) - frames <= 1
    assert grown < 100_000, f"{grown} bytes kept after 500 slider changes"


def test_frames_keep_arriving_during_a_drag(qtbot, make_session):
    """Every run the drag starts shows a frame before a newer value supersedes it."""
    gates = [threading.Event() for _ in range(3)]
    gates[0].set()  # step 1 of every run runs freely; steps 2 and 3 wait
    engine = FakeEngine(steps=3, gates=gates)
    session = make_session(engine)
    frames: list[StepEvent] = []
    session.runs.frame.connect(frames.append)
    session.runs.set_live(True)
    for i in range(20):
        session.model.set(guidance=1.0 + i)
        qtbot.wait(5)
    gates[1].set()
    gates[2].set()
    settle(qtbot, session)
    started = [r.request_id for r in engine.started_runs]
    shown = {f.request_id for f in frames}
    assert len(started) >= 2
    assert all(rid in shown for rid in started[:-1])  # each superseded run still painted a frame
    assert len(set(started)) == len(started)
    assert session.gallery.results[-1].request.guidance == 20.0


def test_live_results_replace_each_other_until_the_person_acts(qtbot, make_session):
    session = make_session(FakeEngine(steps=2))
    doc = session.document
    session.runs.set_live(True)
    settle(qtbot, session)
    assert len(doc.layers) == 2
    session.model.set(guidance=3.0)
    settle(qtbot, session)
    assert len(doc.layers) == 2  # the second live result replaced the first
    assert len(session.gallery.results) == 2  # both stay in the gallery
    assert doc.layers[-1].source == session.gallery.results[-1].id
    doc.set_layer(doc.layers[-1].id, name="mine")  # the person acts on it: it is kept
    session.model.set(guidance=4.0)
    settle(qtbot, session)
    assert len(doc.layers) == 3 and doc.layers[1].name == "mine"
    assert doc.undo() and len(doc.layers) == 2  # a live result is one undoable step


def test_live_off_runs_nothing_and_generate_is_never_coalesced_away(qtbot, make_session):
    engine = FakeEngine(steps=1)
    session = make_session(engine)
    session.model.set(guidance=2.0)
    qtbot.wait(20)
    assert engine.started_runs == []
    session.runs.set_live(True)
    session.runs.set_live(False)  # a run may have started; nothing waits
    assert not session.runs.pending
    request = session.runs.generate()
    settle(qtbot, session)
    assert request is not None and session.gallery.results[-1].request == request


def test_live_img2img_follows_the_painting(qtbot, make_session):
    engine = FakeEngine(steps=1)
    session = make_session(engine)
    doc = session.document
    session.model.set_mode("img2img")
    session.runs.set_live(True)
    settle(qtbot, session)
    runs = len(engine.started_runs)
    sketch = doc.add_layer("sketch")
    settle(qtbot, session)
    patch = np.zeros((6, 6, 4), np.uint8)
    patch[...] = (10, 200, 10, 255)
    doc.paint(sketch.id, 2, 2, patch)
    settle(qtbot, session)
    assert len(engine.started_runs) > runs
    last = engine.started_runs[-1]
    assert last.init_image is not None and last.init_image.pixels[4, 4].tolist() == [10, 200, 10]
    # The live result layer it replaces is not part of its own init image.
    assert session.gallery.results[-1].request.init_image == last.init_image
