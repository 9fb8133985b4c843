"""Live scheduling: turn a stream of changes (a slider drag, typing, painting) into a few runs.

Policy: a change made while the engine is idle runs at once (leading edge). While a run is in progress a
change only marks the values dirty; once the run in progress has shown `min_frames` preview frames, or
has ended, the newest values are built into a request and submitted (trailing edge, so the final values
always run). Each run therefore shows a frame before it is superseded: frames keep arriving during a
drag, and a burst of changes starts only a few runs. Requests are built only when they are about to run,
so a burst builds few of them (an img2img request copies the whole canvas) and none pile up.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot

from backend.events import StepEvent
from backend.request import Request
from studio.engine_host import EngineHost


class LiveScheduler(QObject):
    """Coalesces changes into runs on an EngineHost; every submission goes through it.

    `build()` makes the request of the current values (None when they cannot run); `submit` (default
    `host.submit`) is called for each request that is to run, so the owner can record it first.
    Signals: `submitted(Request)` after each submission.
    """

    submitted = Signal(object)

    def __init__(
        self,
        host: EngineHost,
        build: Callable[[], Request | None],
        submit: Callable[[Request], None] | None = None,
        min_frames: int = 1,
    ) -> None:
        super().__init__()
        self.host = host
        self._build = build
        self._submit = submit if submit is not None else host.submit
        self.min_frames = min_frames
        self.submitted_count = 0  # runs asked for, for tests and statistics
        self._dirty = False  # the values changed since the newest submission
        self._last_id: str | None = None  # the newest request submitted
        self._frames = 0  # frames seen of that request
        # Busy as the GUI thread has seen it: from a submission until the host's idle signal arrives. The
        # engine thread may already be done, but judging by what was delivered keeps a burst coalesced.
        self._in_flight = False
        host.step.connect(self._on_step)
        host.idle.connect(self._on_idle)

    @property
    def pending(self) -> bool:
        """True when changed values wait for the run in progress to show a frame."""
        return self._dirty

    def schedule(self) -> None:
        """The values changed: run them now if the engine is free (or has shown a frame), else soon."""
        if not self._in_flight or self._frames >= self.min_frames:
            self._run_latest()
        else:
            self._dirty = True

    def submit_now(self, request: Request) -> None:
        """Run `request` at once (Generate), superseding whatever runs or waits."""
        self._dirty = False
        self._last_id = request.request_id
        self._frames = 0
        self._in_flight = True
        self.submitted_count += 1
        self._submit(request)
        self.submitted.emit(request)

    def discard(self) -> None:
        """Forget changes not yet submitted (Cancel, live switched off)."""
        self._dirty = False

    def flush(self) -> None:
        """Submit the newest values now if they changed since the last submission."""
        if self._dirty:
            self._run_latest()

    def _run_latest(self) -> None:
        self._dirty = False
        request = self._build()
        if request is not None:
            self.submit_now(request)

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
