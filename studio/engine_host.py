"""The one long-lived engine thread and its mailbox.

`EngineHost.submit(request)` puts the request in a one-slot mailbox (a newer submission replaces one not
yet started) and sets the running request's cancel Event, so the engine thread is never asked to run a
queued slot call while it is busy. The thread takes the newest request and iterates `engine.generate`;
what it yields reaches the GUI thread as queued signals, with at most one preview frame pending: a frame
the GUI has not yet taken is replaced by the next one, so a slow GUI drops frames instead of piling them up.

Public signals are emitted on the thread the host lives in (the GUI thread), so anything connected to them,
lambdas included, runs there. The GUI thread never waits on the engine thread, except in `shutdown`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot

from backend.device_memory import free_memory
from backend.engine import Engine
from backend.errors import StudioError, describe_error
from backend.events import Done, StepEvent
from backend.request import Request

log = logging.getLogger(__name__)


@dataclass
class _Run:
    request: Request
    cancel: threading.Event


class EngineHost(QObject):
    """Owns the engine thread: a one-slot mailbox in, started/step/done/cancelled/failed/idle signals out.

    Signals (all on the host's thread):
      started(Request)        the engine thread took this request and began running it
      step(StepEvent)         the newest preview frame (older undelivered frames are dropped)
      done(Done)              a run finished; never emitted for a cancelled run
      cancelled(Request)      a started run stopped because it was cancelled or superseded, or `cancel`
                              dropped a request the thread had not taken yet (it never started)
      failed(Request, str)    a run raised; the message is meant for a person
      idle()                  the engine thread finished a run and found the mailbox empty
    """

    started = Signal(object)
    step = Signal(object)
    done = Signal(object)
    cancelled = Signal(object)
    failed = Signal(object, str)
    idle = Signal()

    # Emitted from the engine thread; connected (queued) to slots of this object on its own thread.
    _w_started = Signal(object)
    _w_frame = Signal()
    _w_done = Signal(object)
    _w_cancelled = Signal(object)
    _w_failed = Signal(object, str)
    _w_idle = Signal()
    _dropped = Signal(object)  # emitted on this thread by cancel(); queued, so never re-entrant

    def __init__(self, engine: Engine, name: str = "studio-engine") -> None:
        super().__init__()
        self.engine = engine
        self._cond = threading.Condition()
        self._mailbox: Request | None = None
        self._run: _Run | None = None
        self._stopping = False
        self._closed = False
        self._frame: StepEvent | None = None  # the one pending frame, guarded by _cond
        self._posted = 0  # frames the engine thread has posted, and the GUI thread has handed on (_cond)
        self._handed = 0
        # True: after each frame the engine thread waits until the GUI thread has handed it on, so no
        # frame is ever dropped (`studio --demo`, which shows every step). False: a slow GUI drops frames.
        self.keep_every_frame = False
        self._w_started.connect(self._on_started)
        self._w_frame.connect(self._on_frame)
        self._w_done.connect(self._on_done)
        self._w_cancelled.connect(self._on_cancelled)
        self._w_failed.connect(self._on_failed)
        self._w_idle.connect(self._on_idle)
        self._dropped.connect(self._on_cancelled, Qt.ConnectionType.QueuedConnection)
        # A strong reference until the thread ends (DESIGN: keep the thread referenced until it is joined).
        self._worker = threading.Thread(target=self._loop, name=name, daemon=False)
        self._worker.start()
        app = QCoreApplication.instance()
        if app is not None:
            # Safety net: a window that forgets to shut the host down must not hang at interpreter exit.
            app.aboutToQuit.connect(self.shutdown)

    # -- GUI-thread API --------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """Run `request` next: replace any request not yet started and cancel the running one."""
        with self._cond:
            if self._stopping:
                return
            self._mailbox = request
            if self._run is not None:
                self._run.cancel.set()
            self._cond.notify_all()

    def cancel(self) -> None:
        """Cancel the running request and drop the one waiting in the mailbox (both end as cancelled)."""
        with self._cond:
            dropped, self._mailbox = self._mailbox, None
            if self._run is not None:
                self._run.cancel.set()
            self._cond.notify_all()  # an engine thread waiting for its frame to be painted stops waiting
        if dropped is not None:
            # Under load the thread may not have taken it yet; without this its submitter waits forever.
            self._dropped.emit(dropped)

    @property
    def busy(self) -> bool:
        """True while a request runs or waits in the mailbox."""
        with self._cond:
            return self._run is not None or self._mailbox is not None

    @property
    def running(self) -> Request | None:
        """The request the engine thread is running now, if any."""
        with self._cond:
            return self._run.request if self._run is not None else None

    def is_alive(self) -> bool:
        """True until the engine thread has ended (after `shutdown`)."""
        return self._worker.is_alive()

    @Slot()
    def shutdown(self, timeout: float = 10.0) -> bool:
        """Cancel, stop the engine thread and join it; True when it ended within `timeout` seconds.

        Safe to call more than once. Events still queued for the GUI thread are dropped.
        """
        with self._cond:
            self._stopping = True
            self._closed = True
            self._mailbox = None
            if self._run is not None:
                self._run.cancel.set()
            self._cond.notify_all()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("engine thread did not stop within %.1f s", timeout)
            return False
        return True

    # -- engine thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._mailbox is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                run = self._run = _Run(self._mailbox, threading.Event())  # type: ignore[arg-type]
                self._mailbox = None
            self._execute(run)
            with self._cond:
                self._run = None
                now_idle = self._mailbox is None and not self._stopping
            if now_idle:
                self._w_idle.emit()

    def _execute(self, run: _Run) -> None:
        """Run one request to its end, turning every outcome into one signal."""
        request, cancel = run.request, run.cancel
        self._w_started.emit(request)
        message = None
        events = None
        finished = False
        try:
            events = self.engine.generate(request, cancel)
            for ev in events:
                if cancel.is_set():
                    break
                if isinstance(ev, StepEvent):
                    self._post_frame(ev, cancel)
                elif isinstance(ev, Done):
                    finished = True
                    self._w_done.emit(ev)
        except Exception as exc:  # the engine thread must survive anything a run raises
            message = describe_error(exc)
            if not isinstance(exc, StudioError):
                log.error("generation failed", exc_info=exc)
        finally:
            if events is not None and hasattr(events, "close"):
                try:
                    events.close()  # run the engine's own clean-up here, on its thread
                except Exception:
                    log.exception("engine clean-up failed")
            events = None
        if message is not None:
            free_memory()
        if finished:
            return  # an error after the image (in clean-up) was logged; the result stands
        if cancel.is_set():
            self._w_cancelled.emit(request)
        else:
            self._w_failed.emit(request, message or "The engine stopped without producing an image.")

    def _post_frame(self, ev: StepEvent, cancel: threading.Event) -> None:
        with self._cond:
            notify = self._frame is None
            self._frame = ev
            self._posted += 1
            posted = self._posted
        if notify:
            self._w_frame.emit()
        if self.keep_every_frame:
            with self._cond:
                # Every way a run is cancelled or the host stopped notifies the condition.
                while self._handed < posted and not cancel.is_set() and not self._stopping:
                    self._cond.wait()

    # -- back on the host's thread ---------------------------------------------------------------------
    @Slot(object)
    def _on_started(self, request: Request) -> None:
        if not self._closed:
            self.started.emit(request)

    @Slot()
    def _on_frame(self) -> None:
        with self._cond:
            ev, self._frame = self._frame, None
            posted = self._posted
        if ev is not None and not self._closed:
            self.step.emit(ev)  # connected directly: the canvas has the frame when this returns
        with self._cond:
            self._handed = posted
            self._cond.notify_all()

    @Slot(object)
    def _on_done(self, done: Done) -> None:
        if not self._closed:
            self.done.emit(done)

    @Slot(object)
    def _on_cancelled(self, request: Request) -> None:
        if not self._closed:
            self.cancelled.emit(request)

    @Slot(object, str)
    def _on_failed(self, request: Request, message: str) -> None:
        if not self._closed:
            self.failed.emit(request, message)

    @Slot()
    def _on_idle(self) -> None:
        if not self._closed and not self.busy:
            self.idle.emit()
