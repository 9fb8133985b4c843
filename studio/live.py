"""Live scheduling: turn a stream of requests (a slider drag, typing) into a few runs, newest last.

Policy: a request offered while the engine is idle runs at once (leading edge). While a run is in
progress the newest offered request waits here, replacing older ones, until the run in progress has shown
`min_frames` preview frames or ended; then it is submitted (trailing edge, so the final values always
run). Each run therefore shows at least one frame before it is superseded: frames keep arriving during a
drag, and a burst of changes starts only a few runs.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot

from backend.events import StepEvent
from backend.request import Request
from studio.engine_host import EngineHost


class LiveScheduler(QObject):
    """Coalesces offered requests into runs on an EngineHost; every submission goes through it.

    `submit` (default `host.submit`) is called for each request that is to run, so the owner can record
    it first. Signals: `submitted(Request)` after each submission.
    """

    submitted = Signal(object)

    def __init__(
        self,
        host: EngineHost,
        submit: Callable[[Request], None] | None = None,
        min_frames: int = 1,
    ) -> None:
        super().__init__()
        self.host = host
        self._submit = submit if submit is not None else host.submit
        self.min_frames = min_frames
        self.pending: Request | None = None
        self.submitted_count = 0  # runs asked for, for tests and the demo's statistics
        self._last_id: str | None = None  # the newest request submitted
        self._frames = 0  # frames seen of that request
        # Busy as the GUI thread has seen it: from a submission until the host's idle signal arrives. The
        # engine thread may already be done, but judging by what was delivered keeps a burst coalesced.
        self._in_flight = False
        host.step.connect(self._on_step)
        host.idle.connect(self._on_idle)

    def offer(self, request: Request) -> None:
        """A new live request: run it now if the engine is free, else keep it as the newest waiting."""
        if not self._in_flight or self._frames >= self.min_frames:
            self.submit_now(request)
        else:
            self.pending = request

    def submit_now(self, request: Request) -> None:
        """Run `request` at once (Generate), superseding whatever runs or waits."""
        self.pending = None
        self._last_id = request.request_id
        self._frames = 0
        self._in_flight = True
        self.submitted_count += 1
        self._submit(request)
        self.submitted.emit(request)

    def discard(self) -> None:
        """Forget the waiting request (Cancel, live switched off)."""
        self.pending = None

    def flush(self) -> None:
        """Submit the waiting request now, if there is one."""
        if self.pending is not None:
            self.submit_now(self.pending)

    @Slot(object)
    def _on_step(self, ev: StepEvent) -> None:
        if ev.request_id != self._last_id:
            return
        self._frames += 1
        if self._frames >= self.min_frames:
            self.flush()

    @Slot()
    def _on_idle(self) -> None:
        self._in_flight = False
        self.flush()
