"""View → Show attribution: which reference fed each pixel of the newest patch-engine result, on the canvas.

Each reference in its own colour (the same colours as `studio-cli generate --attribution`), a legend in the
canvas corner, and the reference's name under the cursor (tooltip and status bar).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Slot
from PySide6.QtGui import QAction, QCursor
from PySide6.QtWidgets import QToolTip

from backend.attribution import attribution_to_rgb, legend, name_at
from studio.gallery import Result
from studio.session import Session
from ui.canvas import CanvasView


class AttributionOverlay(QObject):
    """Keeps the canvas overlay in step with the toggle and the newest result that has a map."""

    def __init__(
        self, canvas: CanvasView, session: Session, action: QAction, say: Callable[[str], None]
    ) -> None:
        super().__init__(canvas)
        self.canvas, self.session, self.action, self._say = canvas, session, action, say
        self.result: Result | None = None
        self._last_text = ""
        action.setEnabled(False)
        action.toggled.connect(self._toggled)
        session.gallery.added.connect(self._added)
        session.gallery.removed.connect(self._forget)
        session.gallery.reset.connect(self._forget)
        canvas.hovered.connect(self._hovered)

    @Slot(object)
    def _added(self, result: Result) -> None:
        if result.attribution is not None:
            self.result = result
            self.action.setEnabled(True)
            self._show()

    @Slot()
    def _forget(self, *_args: object) -> None:
        shown = [r for r in self.session.gallery.results if r.attribution is not None]
        self.result = shown[-1] if shown else None
        self.action.setEnabled(self.result is not None)
        if self.result is None:
            self.action.setChecked(False)
        self._show()

    @Slot(bool)
    def _toggled(self, _on: bool) -> None:
        self._show()

    def _names(self) -> list[str]:
        assert self.result is not None
        return [str(n) for n in self.result.extras.get("references", [])]

    def _show(self) -> None:
        if not self.action.isChecked() or self.result is None or self.result.attribution is None:
            self.canvas.set_overlay(None)
            return
        names = self._names()
        entries = legend(self.result.attribution, names)
        shown = [(e.rgb, f"{e.name}  {e.share:.0%}") for e in entries]
        self.canvas.set_overlay(attribution_to_rgb(self.result.attribution, names), shown)

    @Slot(int, int)
    def _hovered(self, x: int, y: int) -> None:
        if self.result is None or self.result.attribution is None or not self.canvas.overlay_shown:
            return
        # The map is stretched over the document: find the map pixel under the document pixel.
        h, w = self.result.attribution.shape[:2]
        doc = self.canvas.document
        text = name_at(self.result.attribution, self._names(), x * w // doc.width, y * h // doc.height)
        if text != self._last_text:
            self._last_text = text or ""
            QToolTip.showText(QCursor.pos(), self._last_text, self.canvas)
            if text:
                self._say(text)
