"""The document: RGBA layers, an inpainting mask, and an undo stack of reversible commands.

Pixels live in numpy arrays so the model needs no QtGui; the canvas widget turns them into images.
Every change goes through a `Command` pushed on the document's `UndoStack`, so undo, the unsaved
marker and the recovery journal all see the same stream of operations (`Document.operation`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from studio.compositing import Compositor, composite
from studio.history import History, SavePoint

__all__ = ["composite"]  # re-exported: the one compositing function, for callers that import it here

_revisions = itertools.count(1)
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


def new_id() -> str:
    """A fresh opaque id for layers and results."""
    return uuid.uuid4().hex[:16]


def writable(pixels: np.ndarray) -> np.ndarray:
    """`pixels` itself when it may be written, else a private copy (copy-on-write of shared arrays)."""
    return pixels if pixels.flags.writeable else pixels.copy()


def shared(pixels: np.ndarray) -> np.ndarray:
    """Mark an array read-only so two owners can hold it; the first to write copies it (`writable`)."""
    pixels.setflags(write=False)
    return pixels


@dataclass
class Layer:
    """One layer: straight-alpha RGBA pixels at their own size, placed at (x, y) on the canvas.

    A layer holds only the rectangle it covers (an imported OpenRaster layer may be far smaller than the
    canvas); outside it the layer is transparent. Pixel arrays may be shared read-only between copies of
    a layer (a save's snapshot, a duplicate, the undo stack): change them only through `place`.
    """

    name: str
    pixels: np.ndarray  # H×W×4 uint8, straight (not premultiplied) alpha
    opacity: float = 1.0
    visible: bool = True
    id: str = field(default_factory=new_id)
    source: str | None = None  # id of the generated result this layer holds (lineage)
    painted: bool = False  # a person painted on it after it was generated
    x: int = 0  # canvas position of the pixels' top-left corner
    y: int = 0
    rev: int = field(default_factory=lambda: next(_revisions), compare=False, repr=False)

    def properties(self) -> dict[str, Any]:
        """Everything but the pixels, as plain JSON values (projects and the journal store these)."""
        return {
            "id": self.id,
            "name": self.name,
            "opacity": float(self.opacity),
            "visible": bool(self.visible),
            "source": self.source,
            "painted": bool(self.painted),
            "x": int(self.x),
            "y": int(self.y),
        }

    def copy(self, **changes: Any) -> Layer:
        """An independent copy, with some fields changed; the pixels are shared until one side writes."""
        return replace(self, pixels=shared(self.pixels), **changes)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """Where the layer's pixels lie on the canvas: x, y, width, height."""
        return self.x, self.y, int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The layer's RGBA pixels inside a canvas rectangle (transparent where it has none); read only."""
        lx, ly = x - self.x, y - self.y
        if lx >= 0 and ly >= 0 and lx + w <= self.pixels.shape[1] and ly + h <= self.pixels.shape[0]:
            view = self.pixels[ly : ly + h, lx : lx + w]
            view.setflags(write=False)  # a view for reading: writes go through `place`
            return view
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0 = max(x, self.x), max(y, self.y)
        x1, y1 = min(x + w, self.x + self.pixels.shape[1]), min(y + h, self.y + self.pixels.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.pixels[
                y0 - self.y : y1 - self.y, x0 - self.x : x1 - self.x
            ]
        return out

    def full(self, width: int, height: int) -> np.ndarray:
        """The layer as a width×height canvas-size RGBA array (read only when it already is one)."""
        return self.region(0, 0, width, height)

    def place(self, x: int, y: int, patch: np.ndarray) -> None:
        """Write RGBA `patch` at canvas position (x, y), growing the layer to cover it if needed."""
        h, w = patch.shape[:2]
        x0, y0 = min(self.x, x), min(self.y, y)
        x1 = max(self.x + self.pixels.shape[1], x + w)
        y1 = max(self.y + self.pixels.shape[0], y + h)
        if (x0, y0, x1 - x0, y1 - y0) != self.bounds:
            grown = np.zeros((y1 - y0, x1 - x0, 4), np.uint8)
            ph, pw = self.pixels.shape[:2]
            grown[self.y - y0 : self.y - y0 + ph, self.x - x0 : self.x - x0 + pw] = self.pixels
            self.pixels, self.x, self.y = grown, x0, y0
        else:
            self.pixels = writable(self.pixels)
        self.pixels[y - self.y : y - self.y + h, x - self.x : x - self.x + w] = patch
        self.rev = next(_revisions)


def blank_pixels(width: int, height: int, rgba: tuple[int, int, int, int] = (0, 0, 0, 0)) -> np.ndarray:
    """An H×W×4 uint8 array filled with one colour (transparent by default)."""
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[...] = rgba
    return out


def rgb_to_rgba(rgb: np.ndarray) -> np.ndarray:
    """Opaque RGBA from an H×W×3 uint8 image."""
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    return np.concatenate([rgb.astype(np.uint8), alpha], axis=2)


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


def merge_pixels(
    upper: np.ndarray, upper_opacity: float, lower: np.ndarray, lower_opacity: float
) -> np.ndarray:
    """`upper` over `lower` (straight-alpha RGBA, each with its layer opacity) as one layer of opacity 1.

    Over any background the merged layer composites to what the two layers gave (to rounding).
    """
    up = upper.astype(np.float32) / 255.0
    lo = lower.astype(np.float32) / 255.0
    a_up = up[..., 3:4] * upper_opacity
    a_lo = lo[..., 3:4] * lower_opacity
    alpha = a_up + a_lo * (1.0 - a_up)
    rgb = (up[..., :3] * a_up + lo[..., :3] * a_lo * (1.0 - a_up)) / np.maximum(alpha, 1e-6)
    out = np.concatenate([rgb, alpha], axis=2) * 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
        _set_state(lower, self.after)
        doc.layers.pop(self.index)
        doc.active_id = lower.id

    def revert(self, doc: Document) -> None:
        _set_state(doc.layers[self.index - 1], self.before)
        doc.layers.insert(self.index, self.upper)
        doc.active_id = self.upper.id


def _set_state(layer: Layer, state: dict[str, Any]) -> None:
    for key, value in state.items():
        setattr(layer, key, value)
    layer.rev = next(_revisions)


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
