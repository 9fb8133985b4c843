"""Painting tools: a stroke's coverage buffer drawn with QPainter dabs, and how it lands on pixels.

A stroke never touches the document while the mouse is down: dabs accumulate in an alpha-only
coverage image, and the canvas shows the layer as it would look with the stroke applied. On release
the canvas commits ONE `Document.paint` (or `paint_mask`) over the stroke's bounding box, so one
stroke is one undo step and the document's stack stays the only undo stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QRadialGradient

BRUSH, ERASER, PICKER, MASK = "brush", "eraser", "picker", "mask"
TOOLS = (BRUSH, ERASER, PICKER, MASK)
# Dabs closer than this fraction of the diameter make a smooth line without wasting time.
SPACING = 0.15


@dataclass
class BrushSettings:
    """What the brush, eraser and mask brush paint with."""

    size: float = 24.0  # diameter in document pixels
    hardness: float = 0.8  # 1 = hard edge, 0 = soft all the way from the centre
    color: tuple[int, int, int] = (20, 20, 20)
    opacity: float = 1.0  # of the whole stroke: overlapping dabs never exceed it


def qimage_to_array(image: QImage) -> np.ndarray:
    """A numpy copy of an Alpha8/Grayscale8 (H×W) or RGBA8888 (H×W×4) image, without row padding."""
    channels = 4 if image.format() == QImage.Format.Format_RGBA8888 else 1
    h, w, bpl = image.height(), image.width(), image.bytesPerLine()
    raw = np.frombuffer(image.constBits(), dtype=np.uint8, count=h * bpl).reshape(h, bpl)
    out = raw[:, : w * channels].copy()
    return out.reshape(h, w, channels) if channels == 4 else out


class Stroke:
    """The coverage (0..1 per pixel) of one stroke in progress, built from soft round dabs."""

    def __init__(self, tool: str, settings: BrushSettings, width: int, height: int, erase: bool = False):
        self.tool = tool
        self.settings = BrushSettings(**vars(settings))
        self.erase = erase  # mask brush with Alt: takes the mask away
        self.coverage = QImage(width, height, QImage.Format.Format_Alpha8)
        self.coverage.fill(0)
        self.bounds = QRect()
        self._last: QPointF | None = None
        self._carry = 0.0  # distance walked since the last dab, so spacing holds across segments

    def add_point(self, point: QPointF, pressure: float = 1.0) -> QRect:
        """Extend the stroke to `point` (document coordinates); return the rectangle that changed."""
        radius = max(0.5, self.settings.size * max(0.05, min(pressure, 1.0)) / 2)
        step = max(0.5, 2 * radius * SPACING)
        dabs: list[QPointF] = []
        if self._last is None:
            dabs.append(point)
        else:
            dx, dy = point.x() - self._last.x(), point.y() - self._last.y()
            length = math.hypot(dx, dy)
            walked = step - self._carry
            while walked <= length:
                t = walked / length
                dabs.append(QPointF(self._last.x() + dx * t, self._last.y() + dy * t))
                walked += step
            self._carry = length - (walked - step)
        self._last = point
        changed = QRect()
        if not dabs:
            return changed
        painter = QPainter(self.coverage)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        for centre in dabs:
            painter.setBrush(self._dab_brush(centre, radius))
            box = QRectF(centre.x() - radius, centre.y() - radius, 2 * radius, 2 * radius)
            painter.drawEllipse(box)
            changed = changed.united(box.toAlignedRect().adjusted(-1, -1, 1, 1))
        painter.end()
        changed = changed.intersected(self.coverage.rect())
        self.bounds = self.bounds.united(changed)
        return changed

    def _dab_brush(self, centre: QPointF, radius: float) -> QBrush:
        gradient = QRadialGradient(centre, radius)
        hard = min(max(self.settings.hardness, 0.0), 1.0)
        gradient.setColorAt(0.0, QColor(255, 255, 255, 255))
        gradient.setColorAt(min(hard, 0.999), QColor(255, 255, 255, 255))
        gradient.setColorAt(1.0, QColor(255, 255, 255, 255 if hard >= 1.0 else 0))
        return QBrush(gradient)

    def alpha(self, rect: QRect) -> np.ndarray:
        """The stroke's coverage times its opacity inside `rect`, H×W float32 in 0..1."""
        cov = qimage_to_array(self.coverage.copy(rect)).astype(np.float32) / 255.0
        return cov * float(self.settings.opacity)

    def reached(self, rect: QRect) -> np.ndarray:
        """Where inside `rect` the stroke changes anything (what `apply` does not leave as it was)."""
        return (qimage_to_array(self.coverage.copy(rect)) > 0) & (self.settings.opacity > 0)

    def apply(self, before: np.ndarray, rect: QRect) -> np.ndarray:
        """`before` (the layer's RGBA pixels, or the mask, inside `rect`) with this stroke applied."""
        a = self.alpha(rect)
        out = self._blend(before, a)
        # Pixels the stroke never reached stay bit-identical (float round trips could nudge them).
        untouched = (a <= 0)[..., None] if before.ndim == 3 else a <= 0
        return np.where(untouched, before, out)

    def _blend(self, before: np.ndarray, a: np.ndarray) -> np.ndarray:
        if self.tool == MASK:
            target = 0.0 if self.erase else 255.0
            out = before.astype(np.float32) * (1 - a) + target * a
            return np.clip(out + 0.5, 0, 255).astype(np.uint8)
        px = before.astype(np.float32)
        dst_a = px[..., 3] / 255.0
        if self.tool == ERASER:
            px[..., 3] = dst_a * (1 - a) * 255.0
            return np.clip(px + 0.5, 0, 255).astype(np.uint8)
        # Straight-alpha "source over" of one flat colour.
        out_a = a + dst_a * (1 - a)
        colour = np.array(self.settings.color, dtype=np.float32)
        safe = np.where(out_a > 0, out_a, 1.0)[..., None]
        rgb = (colour * a[..., None] + px[..., :3] * (dst_a * (1 - a))[..., None]) / safe
        out = np.concatenate([rgb, (out_a * 255.0)[..., None]], axis=2)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
