"""The document: RGBA layers (studio/layers.py), an inpainting mask, and an undo history of commands.

Every change goes through a `Command` (studio/commands.py) pushed on the document's history, so undo,
the unsaved marker and the recovery journal all see the same stream of operations (`Document.operation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from studio.commands import (
    AddLayer,
    Command,
    MergeDown,
    MoveLayer,
    Paint,
    PaintMask,
    RemoveLayer,
    SetLayerProps,
)
from studio.compositing import Compositor, composite
from studio.history import History, SavePoint
from studio.layers import Layer, blank_pixels, merge_pixels, new_id, rgb_to_rgba, shared

__all__ = ["composite"]  # re-exported: the one compositing function, for callers that import it here

# The largest canvas opened or created unless the settings say otherwise (`Settings.max_canvas_pixels`):
# 8192², the largest image `backend.images` decodes. Its picture, mask and one layer take about 600 MB.
MAX_CANVAS_PIXELS = 8192 * 8192
# The memory the undo history may hold by default (`Settings.undo_limit_bytes`); the oldest steps go first.
UNDO_LIMIT_BYTES = 1 << 30


def canvas_problem(width: int, height: int, max_pixels: int = MAX_CANVAS_PIXELS) -> str | None:
    """Why a width×height canvas cannot be opened (checked before anything is allocated), or None."""
    if width * height <= max_pixels:
        return None
    return (
        f"its {width}×{height} canvas ({width * height / 1e6:.0f} megapixels) is larger than the "
        f"{max_pixels / 1e6:.0f} megapixels this studio opens (a setting: document/max_canvas_pixels)"
    )


class Document(QObject):
    """Layers (bottom first), the inpainting mask and the undo stack of one canvas.

    Signals: `changed(kind)` after any change ("layers", "pixels", "mask", "reset", and "canvas" when the
    canvas size changes: studio/canvas_ops.py); `operation(what,
    command)` with what = "do", "undo" or "redo" so a journal can record the exact stream of operations;
    `clean_changed(bool)` when the document becomes saved or unsaved; `active_changed(layer_id)` when
    `set_active` chooses another layer (an operation that moves the active layer says so in its own
    record, so it does not emit this).
    """

    changed = Signal(str)
    operation = Signal(str, object)
    clean_changed = Signal(bool)
    active_changed = Signal(str)

    def __init__(self, width: int = 512, height: int = 512, layers: list[Layer] | None = None) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.layers: list[Layer] = layers if layers is not None else [self._background()]
        self.mask = np.zeros((height, width), dtype=np.uint8)
        self.active_id: str | None = self.layers[-1].id if self.layers else None
        self.history: History[Command] = History(UNDO_LIMIT_BYTES)
        # The picture a view keeps up to date (the canvas draws it); others read its caches, GUI thread only.
        self.compositor = Compositor()

    def _background(self) -> Layer:
        return Layer("Background", blank_pixels(self.width, self.height, (255, 255, 255, 255)))

    # -- queries -------------------------------------------------------------------------------------
    def layer(self, layer_id: str) -> Layer:
        """The layer with this id (KeyError if none)."""
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise KeyError(layer_id)

    def index_of(self, layer_id: str) -> int:
        """Position of a layer, 0 = bottom."""
        return next(i for i, layer in enumerate(self.layers) if layer.id == layer_id)

    @property
    def active(self) -> Layer | None:
        """The layer strokes go to."""
        return next((layer for layer in self.layers if layer.id == self.active_id), None)

    def composite(self) -> np.ndarray:
        """What the person sees: visible layers over white, H×W×3 uint8."""
        return composite(self.layers, self.width, self.height)

    def composite_of(self, layers: Sequence[Layer]) -> np.ndarray:
        """The composite of some of this document's layers, from the view's caches (`compositor`) when
        they hold it: a live img2img run's input costs a copy, not a blend of every layer. GUI thread."""
        return self.compositor.composite_of(layers, self.width, self.height)

    def set_active(self, layer_id: str) -> None:
        """Choose the layer strokes go to (KeyError if none): no undo step, but a journal records it."""
        self.layer(layer_id)
        if layer_id != self.active_id:
            self.active_id = layer_id
            self.active_changed.emit(layer_id)

    # -- undo stack ----------------------------------------------------------------------------------
    def push(self, command: Command) -> None:
        """Apply a command and make it undoable; clears the redo list (and drops the oldest steps when
        the history holds more than `history.limit_bytes`)."""
        was_clean = self.is_clean
        command.apply(self)
        self.history.did(command)
        self._announce("do", command, was_clean)

    def undo(self) -> bool:
        """Revert the last command; False when there is nothing to undo."""
        was_clean = self.is_clean
        command = self.history.undid()
        if command is None:
            return False
        command.revert(self)
        self._announce("undo", command, was_clean)
        return True

    def redo(self) -> bool:
        """Re-apply the last undone command; False when there is nothing to redo."""
        was_clean = self.is_clean
        command = self.history.redid()
        if command is None:
            return False
        command.apply(self)
        self._announce("redo", command, was_clean)
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self.history.done)

    @property
    def can_redo(self) -> bool:
        return bool(self.history.undone)

    @property
    def undo_label(self) -> str:
        return self.history.done[-1].label if self.history.done else ""

    @property
    def redo_label(self) -> str:
        return self.history.undone[-1].label if self.history.undone else ""

    @property
    def is_clean(self) -> bool:
        """True when the document equals what was last saved (or opened)."""
        return self.history.is_clean

    def save_point(self) -> SavePoint:
        """Where the history stands now: give it to `set_clean` when a save of this state finishes."""
        return self.history.save_point()

    def set_clean(self, point: SavePoint | None = None) -> None:
        """Mark the current state as saved, or the state at `point` (a save that ran while the person
        kept working: clean again only if they undo back to it)."""
        was_clean = self.is_clean
        self.history.mark_clean(point)
        if was_clean != self.is_clean:
            self.clean_changed.emit(self.is_clean)

    def _announce(self, what: str, command: Command, was_clean: bool) -> None:
        self.operation.emit(what, command)
        self.changed.emit(command.kind)
        if was_clean != self.is_clean:
            self.clean_changed.emit(self.is_clean)

    def reset(
        self, width: int, height: int, layers: list[Layer] | None = None, mask: np.ndarray | None = None
    ) -> None:
        """Replace the whole document (new canvas, opened project); clears undo and marks it clean."""
        self.width, self.height = width, height
        self.layers = layers if layers is not None else [self._background()]
        self.mask = mask if mask is not None else np.zeros((height, width), dtype=np.uint8)
        self.active_id = self.layers[-1].id if self.layers else None
        self.history.clear()
        self.changed.emit("reset")
        self.clean_changed.emit(True)

    # -- operations (each one undoable command) -------------------------------------------------------
    def add_layer(
        self,
        name: str = "",
        pixels: np.ndarray | None = None,
        index: int | None = None,
        source: str | None = None,
    ) -> Layer:
        """Add a layer above the active one (or at `index`); transparent unless pixels are given."""
        if pixels is None:
            pixels = blank_pixels(self.width, self.height)
        elif pixels.shape[2] == 3:
            pixels = rgb_to_rgba(pixels)
        layer = Layer(name or f"Layer {len(self.layers) + 1}", pixels.copy(), source=source)
        if index is None:
            index = self.index_of(self.active_id) + 1 if self.active_id else len(self.layers)
        self.push(AddLayer(layer, index, label="Add result" if source else "Add layer"))
        return layer

    def delete_layer(self, layer_id: str) -> None:
        """Delete a layer (undoable)."""
        self.push(RemoveLayer(self.layer(layer_id), self.index_of(layer_id)))

    def duplicate_layer(self, layer_id: str) -> Layer:
        """Copy a layer above itself."""
        src = self.layer(layer_id)
        copy = src.copy(id=new_id(), name=f"{src.name} copy")
        self.push(AddLayer(copy, self.index_of(layer_id) + 1, label="Duplicate layer"))
        return copy

    def merge_down(self, layer_id: str) -> None:
        """Merge a visible layer into the visible layer below it (undoable); ValueError says why not."""
        index = self.index_of(layer_id)
        if index == 0:
            raise ValueError("the bottom layer has nothing below it to merge into")
        upper, lower = self.layers[index], self.layers[index - 1]
        if not (upper.visible and lower.visible):
            raise ValueError("show both layers first: a hidden layer would vanish or appear in the merge")
        # The merged layer covers both layers' rectangles (each may lie anywhere, at its own size).
        x0, y0 = min(upper.x, lower.x), min(upper.y, lower.y)
        x1 = max(upper.x + upper.pixels.shape[1], lower.x + lower.pixels.shape[1])
        y1 = max(upper.y + upper.pixels.shape[0], lower.y + lower.pixels.shape[0])
        box = (x0, y0, x1 - x0, y1 - y0)
        merged = merge_pixels(upper.region(*box), upper.opacity, lower.region(*box), lower.opacity)
        keys = ("pixels", "x", "y", "opacity", "painted")
        before = {key: getattr(lower, key) for key in keys} | {"pixels": shared(lower.pixels)}
        # Opacities are in the merged pixels; a generated layer the person changed counts as painted.
        after = {
            "pixels": shared(merged),
            "x": x0,
            "y": y0,
            "opacity": 1.0,
            "painted": lower.source is not None,
        }
        self.push(MergeDown(upper, index, before, after))

    def move_layer(self, layer_id: str, new_index: int) -> None:
        """Move a layer to a new position (0 = bottom)."""
        old = self.index_of(layer_id)
        new_index = max(0, min(new_index, len(self.layers) - 1))
        if old != new_index:
            self.push(MoveLayer(old, new_index))

    def set_layer(self, layer_id: str, **props: Any) -> None:
        """Change name, opacity and/or visible of a layer (no command when nothing changes)."""
        allowed = {"name", "opacity", "visible"}
        if not set(props) <= allowed:
            raise ValueError(f"unknown layer properties: {sorted(set(props) - allowed)}")
        layer = self.layer(layer_id)
        new = {k: v for k, v in props.items() if getattr(layer, k) != v}
        if new:
            old = {k: getattr(layer, k) for k in new}
            label = "Rename layer" if "name" in new else "Layer properties"
            self.push(SetLayerProps(layer_id, old, new, label=label))

    def paint(
        self, layer_id: str, x: int, y: int, after: np.ndarray, label: str = "Paint", by_person: bool = True
    ) -> None:
        """Replace a rectangle of a layer's RGBA pixels, clipped to the canvas."""
        layer = self.layer(layer_id)
        x, y, after = _clip(x, y, after, self.width, self.height)
        if after.size == 0:
            return
        h, w = after.shape[:2]
        before = layer.region(x, y, w, h).copy()
        if np.array_equal(before, after):
            return
        self.push(Paint(layer_id, x, y, before, after.copy(), by_person, layer.painted, label=label))

    def fill(self, layer_id: str, rgba: tuple[int, int, int, int]) -> None:
        """Fill a whole layer with one colour."""
        self.paint(layer_id, 0, 0, blank_pixels(self.width, self.height, rgba), label="Fill")

    def clear(self, layer_id: str) -> None:
        """Make a whole layer transparent (only the part it covers needs clearing)."""
        x, y, w, h = self.layer(layer_id).bounds
        self.paint(layer_id, x, y, blank_pixels(w, h), label="Clear")

    def paint_mask(self, x: int, y: int, after: np.ndarray, label: str = "Mask") -> None:
        """Replace a rectangle of the inpainting mask (255 = repaint), clipped to the canvas."""
        x, y, after = _clip(x, y, after, self.width, self.height)
        if after.size == 0:
            return
        h, w = after.shape[:2]
        before = self.mask[y : y + h, x : x + w].copy()
        if not np.array_equal(before, after):
            self.push(PaintMask(x, y, before, after.astype(np.uint8).copy(), label=label))

    def clear_mask(self) -> None:
        """Remove the whole inpainting mask (undoable)."""
        self.paint_mask(0, 0, np.zeros_like(self.mask), label="Clear mask")


def _clip(x: int, y: int, patch: np.ndarray, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """Clip a patch placed at (x, y) to a width×height canvas."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + patch.shape[1], width), min(y + patch.shape[0], height)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, patch[:0, :0]
    return x0, y0, patch[y0 - y : y1 - y, x0 - x : x1 - x]
