"""Changes to the canvas itself, each one undoable command: its size (Image → Canvas size, Expand), its
scale (an upscale of the whole canvas), and a group of commands that undo as one step.

Growing the canvas moves no pixels: layers keep their own size at an offset, so growing on the left or top
only shifts every layer's position; the new area is transparent over the white paper. The mask grows with
the canvas (the new area unmasked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from studio.commands import Command
from studio.document import Document
from studio.layers import Layer


@dataclass
class ResizeCanvas(Command):
    """Make the canvas width × height, moving every layer by (dx, dy) (the old canvas's new top-left)."""

    width: int
    height: int
    dx: int
    dy: int
    old: tuple[int, int] = (0, 0)
    old_mask: np.ndarray | None = None
    label: str = "Canvas size"
    kind = "canvas"  # the canvas size, the mask and every layer's place change: views rebuild

    @property
    def nbytes(self) -> int:
        return int(self.old_mask.nbytes) if self.old_mask is not None else 256

    def apply(self, doc: Document) -> None:
        self.old, self.old_mask = (doc.width, doc.height), doc.mask
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        _paste(mask, doc.mask, self.dx, self.dy)
        for layer in doc.layers:
            layer.x += self.dx
            layer.y += self.dy
        doc.width, doc.height, doc.mask = self.width, self.height, mask

    def revert(self, doc: Document) -> None:
        for layer in doc.layers:
            layer.x -= self.dx
            layer.y -= self.dy
        doc.width, doc.height = self.old
        if self.old_mask is not None:
            doc.mask = self.old_mask


@dataclass
class ScaleCanvas(Command):
    """Scale the canvas, every layer (Lanczos, positions too) and the mask by a whole factor."""

    factor: int
    before: list[tuple[Layer, np.ndarray, int, int]] = field(default_factory=list)
    old_mask: np.ndarray | None = None
    label: str = "Scale canvas"
    kind = "canvas"

    @property
    def nbytes(self) -> int:
        kept = sum(int(pixels.nbytes) * (1 + self.factor**2) for _, pixels, _, _ in self.before)
        return kept + (int(self.old_mask.nbytes) if self.old_mask is not None else 0)

    def apply(self, doc: Document) -> None:
        f = self.factor
        self.before = [(layer, layer.pixels, layer.x, layer.y) for layer in doc.layers]
        self.old_mask = doc.mask
        for layer in doc.layers:
            h, w = layer.pixels.shape[:2]
            layer.pixels = _resize(layer.pixels, w * f, h * f, Image.Resampling.LANCZOS)
            layer.x, layer.y = layer.x * f, layer.y * f
        doc.mask = _resize(doc.mask, doc.width * f, doc.height * f, Image.Resampling.NEAREST)
        doc.width, doc.height = doc.width * f, doc.height * f

    def revert(self, doc: Document) -> None:
        for layer, pixels, x, y in self.before:
            layer.pixels, layer.x, layer.y = pixels, x, y
        doc.width, doc.height = doc.width // self.factor, doc.height // self.factor
        if self.old_mask is not None:
            doc.mask = self.old_mask


@dataclass
class CommandGroup(Command):
    """Commands that undo and redo as one step; more may join it while it is the newest step."""

    commands: list[Command] = field(default_factory=list)
    label: str = "change"
    kind = "canvas"

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.commands)

    def apply(self, doc: Document) -> None:
        for command in self.commands:
            command.apply(doc)

    def revert(self, doc: Document) -> None:
        for command in reversed(self.commands):
            command.revert(doc)

    def join(self, doc: Document, command: Command) -> bool:
        """Apply `command` as part of this step, if this step is still the newest; False otherwise."""
        if not doc.history.done or doc.history.done[-1] is not self:
            return False
        command.apply(doc)
        self.commands.append(command)
        doc.changed.emit(self.kind)
        doc.operation.emit("do", self)  # one more step of this group: a journal records its state
        return True


def resize_canvas(
    doc: Document, width: int, height: int, dx: int = 0, dy: int = 0, label: str = ""
) -> Command:
    """Make the canvas width × height with the old picture's top-left at (dx, dy); one undo step."""
    command = CommandGroup([ResizeCanvas(width, height, dx, dy)], label or "Canvas size")
    doc.push(command)
    return command


def _paste(target: np.ndarray, source: np.ndarray, dx: int, dy: int) -> None:
    """Copy `source` into `target` at (dx, dy), cropped to what overlaps."""
    h, w = source.shape[:2]
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + w, target.shape[1]), min(dy + h, target.shape[0])
    if x1 > x0 and y1 > y0:
        target[y0:y1, x0:x1] = source[y0 - dy : y1 - dy, x0 - dx : x1 - dx]


def _resize(pixels: np.ndarray, width: int, height: int, resample: Image.Resampling) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        # Straight alpha: scale colour premultiplied so transparent pixels do not bleed their colour.
        alpha = pixels[..., 3:4].astype(np.float32) / 255.0
        premultiplied = np.concatenate([pixels[..., :3] * alpha, pixels[..., 3:4]], axis=2)
        channels = [
            np.asarray(
                Image.fromarray(premultiplied[..., c].astype(np.float32), "F").resize(
                    (width, height), resample
                )
            )
            for c in range(4)
        ]
        out = np.stack(channels, axis=2)
        a = np.clip(out[..., 3:4], 0, 255)
        colour = np.where(a > 0, out[..., :3] / np.maximum(a / 255.0, 1e-6), 0)
        return np.clip(np.concatenate([colour, a], axis=2) + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(pixels).resize((width, height), resample))
