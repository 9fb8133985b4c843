"""Python's cyclic garbage collector, run on the GUI thread only.

Python collects reference cycles in whichever thread happens to cross an allocation threshold. The engine
thread allocates the most, so a collection there could finalise a window's Qt objects caught in a cycle:
a QObject deleted (its timers stopped) from a thread that does not own it, which crashes later, in the
GUI thread's event loop. So the automatic collector is switched off and a timer on the GUI thread runs
the generation Python would have run, by the same thresholds (calibre, pyqtgraph and novelWriter do the
same for the same reason).
"""

from __future__ import annotations

import gc
import time

from PySide6.QtCore import QObject, QTimer, Slot

# Python runs a full collection only when the objects waiting in the oldest generation reach a quarter of
# those already there, which a timer cannot see; a full pass over what a session holds costs tens of
# milliseconds or more on the GUI thread, so one runs at most this often and a younger generation otherwise.
FULL_COLLECTION_EVERY_S = 60.0


class GuiThreadCollector(QObject):
    """Switches Python's automatic collector off and collects from a GUI-thread timer instead."""

    def __init__(self, interval_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect_due)
        self._last_full = time.monotonic()

    def start(self) -> None:
        """From now on only this thread collects. Call from the thread that owns the Qt objects."""
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        """Give collection back to Python."""
        self._timer.stop()
        gc.enable()

    @Slot()
    def freeze(self) -> None:
        """Leave what exists now (modules, classes, the window) out of future full collections.

        A full collection with torch and diffusers loaded visits about half a million objects (0.8 s
        here, the GUI thread stalled); what start-up made lives for the whole session anyway. No
        collection first: that would be the stall this avoids.
        """
        gc.freeze()

    @Slot()
    def collect_due(self) -> int | None:
        """Collect the oldest generation past its threshold, as Python would have, but a full collection
        at most every FULL_COLLECTION_EVERY_S; the generation collected, or None if none was due."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        due = [g for g in range(3) if counts[g] > thresholds[g]]
        if not due:
            return None
        generation = due[-1]
        if generation == 2 and time.monotonic() - self._last_full < FULL_COLLECTION_EVERY_S:
            generation = 1
        gc.collect(generation)
        if generation == 2:
            self._last_full = time.monotonic()
        return generation
