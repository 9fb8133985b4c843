"""Slow look-ups off the GUI thread: run one function on a thread, get its result on the GUI thread.

Listing a folder of reference images decodes and hashes every image; discovering models walks folders
and the hub cache. Either can take seconds on a busy disk, and on the GUI thread the window would freeze
for that long. `Call` runs the function on a daemon thread (a quit never waits for a scan) and emits
`finished(result, error)`, which Qt queues to the GUI thread: connect it to a slot of a widget. If the
widget is gone by then, Qt drops the delivery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)


class Call(QObject):
    """One function call on a worker thread; `finished(result, error)` arrives on the GUI thread."""

    finished = Signal(object, object)  # the result (None on error), the exception (None on success)

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, daemon: bool = True) -> None:
        super().__init__()
        self.name = name
        self._fn = fn
        self._args = args
        self._thread = threading.Thread(target=self._run, name=f"studio-{name}", daemon=daemon)

    def start(self) -> Call:
        """Start the call; keep the returned object until `finished` arrives.

        A daemon call (the default: look-ups) never holds up a quit; a writer should not be one."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True until the function has returned or raised."""
        return self._thread.is_alive()

    def join(self) -> None:
        """Wait for the function to return (closing while a file is written)."""
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            result = self._fn(*self._args)
        except Exception as exc:  # noqa: BLE001 - delivered to the slot, which says what went wrong
            self.finished.emit(None, exc)
            return
        self.finished.emit(result, None)


def labelled_models(discover: Callable[..., Any], allow_pickle: bool, *args: Any) -> list[tuple[str, str]]:
    """(name, path) of the model files `discover(*args)` finds: pickles only when allowed, marked so.

    The backend modules are imported by `discover`'s caller on the worker thread, not here."""
    return [
        (f"{m.name} (pickle)" if m.pickle else m.name, m.path)
        for m in discover(*args)
        if allow_pickle or not m.pickle
    ]


class ModelLookup(QObject):
    """Model files looked for on a worker thread once, until asked again. `found` is None until a look
    ends, then the (name, path) list (empty when the look failed); `ready` says so on the GUI thread.

    A look started again while another runs wins: the earlier one's answer is dropped when it comes.
    """

    ready = Signal()

    def __init__(
        self, name: str, fn: Callable[..., list[tuple[str, str]]], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.name, self._fn = name, fn
        self.found: list[tuple[str, str]] | None = None
        self._call: Call | None = None

    @property
    def running(self) -> bool:
        """True while a look runs."""
        return self._call is not None

    def look(self, *args: Any) -> None:
        """Look with these arguments, unless an answer is kept or a look is running."""
        if self.found is None and self._call is None:
            self.again(*args)

    def again(self, *args: Any) -> None:
        """Drop the answer and any look still running, and look afresh."""
        self.found = None
        self._call = Call(self.name, self._fn, *args)
        self._call.finished.connect(self._finished)
        self._call.start()

    @Slot(object, object)
    def _finished(self, found: list[tuple[str, str]] | None, error: object) -> None:
        sender = self.sender()
        # An overtaken look is dropped; so is one whose Call is already gone (sender None), which
        # otherwise matched `_call` once the newer look had ended and set it to None.
        if sender is None or sender is not self._call:
            return
        self._call = None
        if error is not None:  # looking is a convenience: say so in the log and list nothing
            log.warning("looking for %s failed: %s", self.name, error)
        self.found = found or []
        self.ready.emit()
