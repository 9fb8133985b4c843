"""Slow look-ups off the GUI thread: run one function on a thread, get its result on the GUI thread.

Listing a folder of reference images decodes and hashes every image; discovering models walks folders
and the hub cache. Either can take seconds on a busy disk, and on the GUI thread the window would freeze
for that long. `Call` runs the function on a daemon thread (a quit never waits for a scan) and emits
`finished(result, error)`, which Qt queues to the GUI thread: connect it to a slot of a widget. If the
widget is gone by then, Qt drops the delivery.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal


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
