"""The document's undoable commands: each applies one change and reverts it exactly.

Every change to a `Document` goes through one of these, pushed on its undo history, so undo, the unsaved
marker and the recovery journal all see the same stream of operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from studio.layers import Layer, writable

if TYPE_CHECKING:
    from studio.document import Document


class Command:
    """A reversible change to a document. `apply` and `revert` must be exact inverses."""

    label = "change"
    kind = "layers"  # which part of the document it touches: "layers", "pixels" or "mask"

    @property
    def nbytes(self) -> int:
        """Memory this command keeps alive in the undo history (pixels it holds, or a small constant)."""
        return 256

    def apply(self, doc: Document) -> None:
        raise NotImplementedError

    def revert(self, doc: Document) -> None:
        raise NotImplementedError


@dataclass
class AddLayer(Command):
    """Insert a layer at an index (default: above the active layer)."""

    layer: Layer
    index: int
    label: str = "Add layer"

    @property
    def nbytes(self) -> int:
        return int(self.layer.pixels.nbytes)

    def apply(self, doc: Document) -> None:
        doc.layers.insert(self.index, self.layer)
        doc.active_id = self.layer.id

    def revert(self, doc: Document) -> None:
        doc.layers.pop(self.index)
        doc.active_id = doc.layers[min(self.index, len(doc.layers) - 1)].id if doc.layers else None


@dataclass
class RemoveLayer(Command):
    """Delete a layer, remembering where it stood."""

    layer: Layer
    index: int
    label: str = "Delete layer"

    @property
    def nbytes(self) -> int:
        return int(self.layer.pixels.nbytes)

    def apply(self, doc: Document) -> None:
        doc.layers.pop(self.index)
        doc.active_id = doc.layers[min(self.index, len(doc.layers) - 1)].id if doc.layers else None

    def revert(self, doc: Document) -> None:
        doc.layers.insert(self.index, self.layer)
        doc.active_id = self.layer.id


@dataclass
class MoveLayer(Command):
    """Move a layer from one index to another."""

    old_index: int
    new_index: int
    label: str = "Move layer"

    def apply(self, doc: Document) -> None:
        doc.layers.insert(self.new_index, doc.layers.pop(self.old_index))

    def revert(self, doc: Document) -> None:
        doc.layers.insert(self.old_index, doc.layers.pop(self.new_index))


@dataclass
class SetLayerProps(Command):
    """Change a layer's name, opacity or visibility."""

    layer_id: str
    old: dict[str, Any]
    new: dict[str, Any]
    label: str = "Layer properties"

    def apply(self, doc: Document) -> None:
        layer = doc.layer(self.layer_id)
        for key, value in self.new.items():
            setattr(layer, key, value)

    def revert(self, doc: Document) -> None:
        layer = doc.layer(self.layer_id)
        for key, value in self.old.items():
            setattr(layer, key, value)


@dataclass
class Paint(Command):
    """Replace a rectangle of a layer's pixels (a stroke, fill, clear or pasted image)."""

    layer_id: str
    x: int
    y: int
    before: np.ndarray
    after: np.ndarray
    mark_painted: bool = True  # a person's stroke, not a generated result
    was_painted: bool = False
    label: str = "Paint"
    kind: str = "pixels"

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)

    def apply(self, doc: Document) -> None:
        layer = doc.layer(self.layer_id)
        layer.place(self.x, self.y, self.after)
        if self.mark_painted and layer.source is not None:
            layer.painted = True

    def revert(self, doc: Document) -> None:
        layer = doc.layer(self.layer_id)
        layer.place(self.x, self.y, self.before)
        layer.painted = self.was_painted


@dataclass
class PaintMask(Command):
    """Replace a rectangle of the inpainting mask (255 = repaint)."""

    x: int
    y: int
    before: np.ndarray
    after: np.ndarray
    label: str = "Mask"
    kind: str = "mask"

    @property
    def nbytes(self) -> int:
        return int(self.before.nbytes + self.after.nbytes)

    def apply(self, doc: Document) -> None:
        h, w = self.after.shape[:2]
        doc.mask = writable(doc.mask)
        doc.mask[self.y : self.y + h, self.x : self.x + w] = self.after

    def revert(self, doc: Document) -> None:
        h, w = self.before.shape[:2]
        doc.mask = writable(doc.mask)
        doc.mask[self.y : self.y + h, self.x : self.x + w] = self.before


@dataclass
class MergeDown(Command):
    """Blend a layer into the one below it and remove it: one undo step.

    The lower layer's before and after states are whole (pixels, x, y, opacity, painted) values, so apply
    and revert only swap them; the arrays are shared read-only, never written.
    """

    upper: Layer
    index: int  # the upper layer's index; the lower one is at index - 1
    before: dict[str, Any]
    after: dict[str, Any]
    label: str = "Merge down"

    @property
    def nbytes(self) -> int:
        return int(self.upper.pixels.nbytes + self.before["pixels"].nbytes + self.after["pixels"].nbytes)

    def apply(self, doc: Document) -> None:
        lower = doc.layers[self.index - 1]
        lower.restore(self.after)
        doc.layers.pop(self.index)
        doc.active_id = lower.id

    def revert(self, doc: Document) -> None:
        doc.layers[self.index - 1].restore(self.before)
        doc.layers.insert(self.index, self.upper)
        doc.active_id = self.upper.id
