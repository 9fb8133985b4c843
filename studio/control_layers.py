"""Control layers: layers that steer a generation through ControlNets, kept in step with what is painted.

Each row binds a layer (or a fixed image, for a control that came with a recipe) to a kind, a ControlNet
and a strength and step range. Complete rows (a ControlNet chosen, the layer still there) become the
request model's `controls`, with the layer's current pixels; painting on a control layer updates them, so
with Live on the picture follows the sketch. Rows without a ControlNet stay here, out of the request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal, Slot

from backend.images import Picture
from backend.request import MAX_CONTROLS, Control
from studio.compositing import composite
from studio.document import Document
from studio.request_model import RequestModel


@dataclass(frozen=True)
class ControlRow:
    """One control as the panel shows it: where its image comes from and how it steers."""

    layer: str | None  # a layer id, or None for a fixed image (a restored recipe's)
    kind: str = "scribble"
    model: str = ""  # the ControlNet; "" until the person chooses one
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    image: Picture | None = None  # the fixed image when `layer` is None


class ControlLayers(QObject):
    """The control rows of one window, feeding `model.controls` from the document's layers.

    Signals: `rows_changed()` when rows were added, removed or rebuilt (the panel redraws them).
    """

    rows_changed = Signal()

    def __init__(self, model: RequestModel, document: Document) -> None:
        super().__init__()
        self.model, self.document = model, document
        self.rows: list[ControlRow] = []
        self._pictures: dict[str, tuple[tuple[int, ...], Picture]] = {}  # layer id → (revision, picture)
        self._sent: tuple[Control, ...] = model.request.controls
        if self._sent:
            self.rows = [_fixed(c) for c in self._sent]
        document.changed.connect(self._document_changed)
        model.field("controls").connect(self._controls_set)

    # -- editing -------------------------------------------------------------------------------------------
    def add(self, layer: str | None, **settings: object) -> ControlRow | None:
        """A new row for `layer` (None: the active layer); None when there are already MAX_CONTROLS."""
        if len(self.rows) >= MAX_CONTROLS:
            return None
        if layer is None:
            active = self.document.active
            layer = active.id if active is not None else None
        row = ControlRow(layer, **settings)  # type: ignore[arg-type]
        self.rows.append(row)
        self.rows_changed.emit()
        self._send()
        return row

    def update(self, index: int, **changes: object) -> None:
        """Change one row (layer, kind, model, strength, start, end)."""
        row = dataclasses.replace(self.rows[index], **changes)  # type: ignore[arg-type]
        if row.layer is not None:
            row = dataclasses.replace(row, image=None)
        if row.start >= row.end:  # keep a usable range: the end follows the start
            row = dataclasses.replace(row, end=min(1.0, row.start + 0.05), start=min(row.start, 0.95))
        self.rows[index] = row
        self._send()

    def remove(self, index: int) -> None:
        """Drop one row."""
        del self.rows[index]
        self.rows_changed.emit()
        self._send()

    def problem(self, index: int) -> str:
        """Why a row is not in the request, "" when it is."""
        row = self.rows[index]
        if not row.model:
            return "Choose a ControlNet for this control."
        if row.layer is not None and not any(la.id == row.layer for la in self.document.layers):
            return "Its layer was deleted: choose another."
        return ""

    # -- keeping the request in step -----------------------------------------------------------------------
    def controls(self) -> tuple[Control, ...]:
        """The request's controls: complete rows, with their layers' pixels as they are now."""
        out = []
        for n, row in enumerate(self.rows):
            if self.problem(n):
                continue
            image = row.image if row.layer is None else self._layer_picture(row.layer)
            if image is not None:
                out.append(Control(row.model, row.kind, image, row.strength, row.start, row.end))
        return tuple(out)

    def _layer_picture(self, layer_id: str) -> Picture:
        doc = self.document
        layer = doc.layer(layer_id)
        key = (layer.rev, layer.x, layer.y, doc.width, doc.height)
        cached = self._pictures.get(layer_id)
        if cached is None or cached[0] != key:
            # The layer alone over white, at the canvas size, whether or not it is shown in the picture.
            picture = Picture(composite([layer.copy(visible=True, opacity=1.0)], doc.width, doc.height))
            self._pictures[layer_id] = cached = (key, picture)
        return cached[1]

    def _send(self) -> None:
        self._sent = self.controls()
        self.model.set(controls=self._sent)

    @Slot(str)
    def _document_changed(self, kind: str) -> None:
        if kind in ("pixels", "layers", "reset") and any(row.layer is not None for row in self.rows):
            self._send()  # equal pictures change nothing in the model, so only real edits re-render

    @Slot(object)
    def _controls_set(self, controls: tuple[Control, ...]) -> None:
        if controls != self._sent:  # set from elsewhere (a restored recipe): show its controls as fixed rows
            self._sent = controls
            self.rows = [_fixed(c) for c in controls]
            self.rows_changed.emit()


def _fixed(control: Control) -> ControlRow:
    return ControlRow(
        None, control.kind, control.model, control.strength, control.start, control.end, control.image
    )
