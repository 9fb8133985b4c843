"""The engine thread host: mailbox, cancel, frames, failures and shutdown, driven by the fake engine."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from fake_engine import FakeEngine, fake_image

from backend.errors import ModelError, describe_error
from backend.request import Request
from studio.engine_host import EngineHost

SMALL = {"width": 32, "height": 32}


@pytest.fixture
def make_host(qtbot):
    hosts: list[EngineHost] = []

    def make(engine) -> EngineHost:
        host = EngineHost(engine)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        assert host.shutdown(timeout=5)
        assert not host.is_alive()


class Recorder:
    """Collects every signal of a host, in order."""

    def __init__(self, host: EngineHost) -> None:
        self.log: list[tuple[str, object]] = []
        host.started.connect(lambda r: self.log.append(("started", r.request_id)))
        host.step.connect(lambda ev: self.log.append(("step", (ev.request_id, ev.step))))
        host.done.connect(lambda d: self.log.append(("done", d)))
        host.cancelled.connect(lambda r: self.log.append(("cancelled", r.request_id)))
        host.failed.connect(lambda r, m: self.log.append(("failed", (r.request_id, m))))
        host.idle.connect(lambda: self.log.append(("idle", None)))

    def kinds(self, request_id: str | None = None) -> list[str]:
        out = []
        for kind, value in self.log:
            if request_id is None or _rid(kind, value) == request_id:
                out.append(kind)
        return out

    def done(self) -> list:
        return [v for k, v in self.log if k == "done"]


def _rid(kind: str, value: object) -> str | None:
    if kind == "done":
        return value.request_id  # type: ignore[attr-defined]
    if kind in ("step", "failed"):
        return value[0]  # type: ignore[index]
    return value if isinstance(value, str) else None


def test_each_step_sends_a_frame_then_done(qtbot, make_host):
    gates = [threading.Event() for _ in range(4)]
    engine = FakeEngine(gates=gates)
    host = make_host(engine)
    rec = Recorder(host)
    req = Request(steps=4, **SMALL)
    host.submit(req)
    for i, gate in enumerate(gates, start=1):
        gate.set()
        qtbot.waitUntil(lambda i=i: ("step", (req.request_id, i)) in rec.log, timeout=5000)
    qtbot.waitUntil(lambda: ("idle", None) in rec.log, timeout=5000)
    assert rec.kinds() == ["started", "step", "step", "step", "step", "done", "idle"]
    done = rec.done()[0]
    assert np.array_equal(done.image, fake_image(req))
    assert done.request == req
    assert not host.busy


def test_a_slow_gui_gets_the_newest_frame_not_a_pile(qtbot, make_host):
    engine = FakeEngine(steps=30)
    host = make_host(engine)
    rec = Recorder(host)
    req = Request(steps=30, **SMALL)
    host.submit(req)
    # The GUI thread processes no events while the engine runs all 30 steps.
    deadline = time.monotonic() + 5
    while len(engine.finished_runs) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    qtbot.waitUntil(lambda: ("idle", None) in rec.log, timeout=5000)
    steps = [v for k, v in rec.log if k == "step"]
    assert 1 <= len(steps) < 30
    assert steps[-1] == (req.request_id, 30)  # the frame that did arrive is the newest one


def test_cancel_mid_run_sends_no_result_and_the_thread_takes_the_next_request(qtbot, make_host):
    gates = [threading.Event(), threading.Event()]
    engine = FakeEngine(steps=3, gates=gates)
    host = make_host(engine)
    rec = Recorder(host)
    first = Request(steps=3, seed=1, **SMALL)
    gates[0].set()
    host.submit(first)
    qtbot.waitUntil(lambda: ("step", (first.request_id, 1)) in rec.log, timeout=5000)
    with qtbot.waitSignal(host.cancelled, timeout=5000):
        host.cancel()
    assert "done" not in rec.kinds(first.request_id)
    gates[1].set()
    second = Request(steps=3, seed=2, **SMALL)
    with qtbot.waitSignal(host.done, timeout=5000) as blocker:
        host.submit(second)
    assert blocker.args[0].request_id == second.request_id
    assert [r.request_id for r in engine.finished_runs] == [second.request_id]


def test_newest_submission_wins_and_unstarted_ones_are_dropped(qtbot, make_host):
    gate = threading.Event()
    engine = FakeEngine(steps=2, gates=[gate])
    host = make_host(engine)
    rec = Recorder(host)
    a, b, c = (Request(steps=2, seed=s, **SMALL) for s in (1, 2, 3))
    host.submit(a)
    qtbot.waitUntil(engine.running.is_set, timeout=5000)
    host.submit(b)  # cancels a; b waits in the mailbox ...
    host.submit(c)  # ... and is replaced by c before it starts
    gate.set()
    qtbot.waitUntil(lambda: ("idle", None) in rec.log, timeout=5000)
    assert [r.request_id for r in engine.started_runs] in (
        [a.request_id, c.request_id],
        [a.request_id, b.request_id, c.request_id],  # only if the thread took b between the two calls
    )
    assert [d.request_id for d in rec.done()] == [c.request_id]
    assert "cancelled" in rec.kinds(a.request_id)


def test_cancel_before_the_thread_takes_a_request_says_it_was_cancelled(qtbot, make_host):
    hold = threading.Event()  # the first run's step ignores cancel until released: the thread stays busy
    engine = FakeEngine(steps=1, hold=hold)
    host = make_host(engine)
    rec = Recorder(host)
    a, b = (Request(steps=1, seed=s, **SMALL) for s in (1, 2))
    try:
        host.submit(a)
        qtbot.waitUntil(engine.running.is_set, timeout=5000)
        host.submit(b)  # waits in the mailbox behind a
        with qtbot.waitSignal(host.cancelled, timeout=5000) as blocker:
            host.cancel()  # b never starts: whoever submitted it must still hear that it ended
        assert blocker.args[0].request_id == b.request_id
        with qtbot.waitSignal(host.idle, timeout=5000):
            hold.set()
        assert rec.kinds(a.request_id) == ["started", "cancelled"]
        assert rec.kinds(b.request_id) == ["cancelled"]  # never started, never ran
    finally:
        hold.set()
    assert [r.request_id for r in engine.started_runs] == [a.request_id]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "Out of memory"),
        (MemoryError(), "Out of memory"),
        (ModelError("model.safetensors: truncated file"), "model.safetensors: truncated file"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    ],
)
def test_a_raising_engine_reports_and_the_host_stays_usable(qtbot, make_host, error, expected):
    engine = FakeEngine(steps=3, raise_at=2, error=error)
    host = make_host(engine)
    bad = Request(steps=3, **SMALL)
    with qtbot.waitSignal(host.failed, timeout=5000) as blocker:
        host.submit(bad)
    request, message = blocker.args
    assert request.request_id == bad.request_id
    assert expected in message
    assert "Traceback" not in message
    engine.raise_at = None
    with qtbot.waitSignal(host.done, timeout=5000):
        host.submit(Request(steps=3, **SMALL))


def test_an_invalid_request_fails_with_the_validation_message(qtbot, make_host):
    host = make_host(FakeEngine())
    with qtbot.waitSignal(host.failed, timeout=5000) as blocker:
        host.submit(Request(steps=0, **SMALL))
    assert "steps must be between 1 and 150" in blocker.args[1]


def test_out_of_memory_message_is_readable():
    msg = describe_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 MiB\nmore"))
    assert msg.startswith("Out of memory while generating (CUDA out of memory. Tried to allocate 20 MiB)")


def test_shutdown_during_a_run_stops_promptly_and_leaves_no_thread(qtbot):
    gate = threading.Event()  # never set: the run would wait forever without a cancel
    engine = FakeEngine(steps=3, gates=[gate])
    host = EngineHost(engine)
    done: list = []
    host.done.connect(done.append)
    host.submit(Request(steps=3, **SMALL))
    qtbot.waitUntil(engine.running.is_set, timeout=5000)
    t0 = time.monotonic()
    assert host.shutdown(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert not host.is_alive()
    assert not engine.running.is_set()
    host.submit(Request(steps=1, **SMALL))  # ignored after shutdown, no error
    qtbot.wait(20)
    assert done == [] and not engine.finished_runs
    assert host.shutdown()  # a second call is harmless


def test_a_cancel_wakes_an_engine_waiting_for_its_frame_to_be_painted(qtbot, make_host):
    # keep_every_frame (studio --demo): the engine thread waits until the GUI has taken each frame. The
    # GUI thread here processes no events, so the first frame is never taken; a cancel must still end
    # the run at once (it notifies the wait), not when the GUI next runs.
    engine = FakeEngine(steps=3)
    host = make_host(engine)
    host.keep_every_frame = True
    host.submit(Request(steps=3, **SMALL))
    deadline = time.monotonic() + 5
    while host._posted < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert host._posted == 1 and host.busy  # waiting for the frame, without events it stays so
    host.cancel()
    deadline = time.monotonic() + 2
    while host.busy and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not host.busy and not engine.finished_runs
    with qtbot.waitSignal(host.cancelled, timeout=5000):
        pass
