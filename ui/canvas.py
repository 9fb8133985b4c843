"""The canvas: shows the document, paints strokes, pans and zooms, and overlays generation previews.

The composite is kept by a `Compositor` (only what a change touched is blended again: a stroke's
rectangle, or the layers from the active one up) and brought up to date when the widget paints, so any
number of document changes between two paints cost one composite. The preview overlay counts the frames
it actually painted (`frames_painted`), which `studio --demo` reports.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QTabletEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QWidget

from studio.commands import Command, Paint, PaintMask
from studio.document import Document
from studio.layers import Layer
from ui.tools import BRUSH, ERASER, MASK, PICKER, BrushSettings, Stroke, qimage_to_array

MASK_RGBA = (230, 30, 30, 0.45)  # the mask shows as translucent red
MASK_FORMAT = QImage.Format.Format_RGBA8888
MIN_ZOOM, MAX_ZOOM = 0.05, 32.0


def array_to_qimage(pixels: np.ndarray) -> QImage:
    """A QImage that owns a copy of an H×W×3 RGB or H×W×4 straight-alpha RGBA uint8 array."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = arr.shape[:2]
    fmt = QImage.Format.Format_RGBA8888 if arr.shape[2] == 4 else QImage.Format.Format_RGB888
    return QImage(arr.data, w, h, arr.strides[0], fmt).copy()


class CanvasView(QWidget):
    """Draws `document.composite()` with the mask and preview overlays; paints with the current tool."""

    color_picked = Signal(QColor)
    zoom_changed = Signal(float)
    stroke_committed = Signal(str)  # tool name, after the one document operation of a stroke
    notice = Signal(str)  # something the person should know about what the tool just did
    hovered = Signal(int, int)  # the document pixel under the cursor, while an overlay is shown

    def __init__(self, document: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.tool = BRUSH
        self.brush = BrushSettings()
        self.zoom = 1.0
        self.offset = QPointF(0, 0)  # widget position of the document's top-left corner
        self.frames_painted = 0
        self._auto_fit = True  # keep fitting the window until the person zooms or pans
        self._preview: QImage | None = None
        self._preview_pending = False
        self._stroke: Stroke | None = None
        # The stroke in progress as the composite seen through its coverage (straight-alpha RGBA): drawn
        # over the preview overlay so a person painting during a run sees their brush.
        self._stroke_rgba: np.ndarray | None = None
        self._stroke_image: QImage | None = None
        # The active layer's pixels with the stroke applied, kept as each segment is shown: every pixel
        # was last computed with its final coverage, so on release this is the commit, not a second blend.
        self._stroke_after: np.ndarray | None = None
        self._stroke_base: tuple | None = None  # the layer's state the kept pixels were computed from
        self._dirty: QRect | None = None  # the rectangle the last paint command changed
        self._stroke_exact = False  # the composite shows the stroke in progress exactly as it will commit
        self._shown: QRect | None = None  # a committed stroke's rectangle the composite already shows
        self._pan_from: QPointF | None = None
        self._space = False
        self._hover: QPointF | None = None
        self._compositor = document.compositor  # shared: a live run reads its caches
        self._full_pending = True  # a change the dirty rectangles do not describe: recomposite
        self._dirty_rects: list[QRect] = []  # painted rectangles not composited yet
        self._image = QImage()
        self._mask_image: QImage | None = None
        self._mask_rgba: np.ndarray | None = None  # made on the first masked pixel: a canvas-size array
        self.mask_visible = True  # the red mask overlay (View → Show mask); the mask itself stays
        # A picture over the document (the attribution map) and its legend (colour, text) in the corner.
        self._overlay: QImage | None = None
        self._legend: list[tuple[tuple[int, int, int], str]] = []
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setMinimumSize(200, 200)
        self.setCursor(Qt.CursorShape.CrossCursor)
        document.operation.connect(self._on_operation)
        document.changed.connect(self._on_document_changed)
        self._refresh()
        self._rebuild_mask()

    # -- the cached images ---------------------------------------------------------------------------
    def _on_operation(self, _what: str, command: Command) -> None:
        # A paint command says which rectangle changed: a brush stroke recomposites only its rectangle.
        self._dirty = None
        if isinstance(command, (Paint, PaintMask)):
            h, w = command.after.shape[:2]
            self._dirty = QRect(command.x, command.y, w, h)

    def _on_document_changed(self, kind: str) -> None:
        dirty, self._dirty = self._dirty, None
        doc = self.document
        if kind == "mask" and dirty is not None:
            x, y, w, h = dirty.x(), dirty.y(), dirty.width(), dirty.height()
            self._paint_mask(x, y, doc.mask[y : y + h, x : x + w])
        elif kind in ("mask", "reset", "canvas"):
            self._rebuild_mask()
        if kind == "pixels" and dirty is not None and dirty == self._shown:
            self._compositor.mark_current(doc.layers)  # the stroke's preview is exactly the result
        elif kind == "pixels" and dirty is not None:
            self._dirty_rects.append(dirty)
        elif kind != "mask":
            self._full_pending = True  # composited when the widget next paints (or is asked for it)
        if kind in ("reset", "canvas"):  # a new document, or this one's canvas grew or shrank
            self._auto_fit = True
            self.fit()
        if kind == "pixels" and dirty is not None:
            self.update(self._view_rect(dirty))  # a stroke's rectangle, not the whole canvas (ms at 2048²)
        else:
            self.update()

    def _refresh(self) -> None:
        """Bring the composite up to date with every change since the last paint (at most one full pass)."""
        doc = self.document
        comp = self._compositor
        if self._stroke is not None and (self._full_pending or self._dirty_rects):
            self._stroke_exact = False  # other changes came in: the stroke's rectangle must be redone
        before = comp.pixels
        if self._full_pending or comp.pixels.shape[:2] != (doc.height, doc.width):
            pivot = doc.index_of(doc.active_id) if doc.active_id is not None else len(doc.layers)
            comp.update(doc.layers, doc.width, doc.height, pivot)
            self._full_pending = False
            self._dirty_rects.clear()
        canvas = QRect(0, 0, doc.width, doc.height)
        for rect in self._dirty_rects:
            rect = rect.intersected(canvas)
            if not rect.isEmpty():
                comp.update_region(doc.layers, (rect.x(), rect.y(), rect.width(), rect.height()))
        if self._dirty_rects or comp.pixels is not before or self._image.isNull():
            self._wrap_rgb()
        self._dirty_rects.clear()

    def _wrap_rgb(self) -> None:
        rgbx = self._compositor.pixels
        h, w = rgbx.shape[:2]
        # Wraps the array without copying: the compositor keeps it alive as long as the image. Four bytes
        # a pixel: Qt draws RGBX several times faster than RGB888, which it converts on every paint.
        self._image = QImage(rgbx.data, w, h, rgbx.strides[0], QImage.Format.Format_RGBX8888)

    def _rebuild_mask(self) -> None:
        self._mask_rgba = None
        self._mask_image = None
        if self.document.mask.any():
            self._paint_mask(0, 0, self.document.mask)

    def _paint_mask(self, x: int, y: int, mask: np.ndarray) -> None:
        """Show `mask` (255 = repaint) at (x, y) in the red overlay; only that rectangle is redone."""
        shape = self.document.mask.shape
        if self._mask_rgba is None or self._mask_rgba.shape[:2] != shape:
            self._mask_rgba = np.zeros(shape + (4,), np.uint8)
            self._mask_rgba[..., :3] = MASK_RGBA[:3]
        h, w = mask.shape
        self._mask_rgba[y : y + h, x : x + w, 3] = (mask.astype(np.float32) * MASK_RGBA[3]).astype(np.uint8)
        rgba = self._mask_rgba
        # Wraps the array without copying, like the composite.
        self._mask_image = QImage(rgba.data, rgba.shape[1], rgba.shape[0], rgba.strides[0], MASK_FORMAT)

    def composite_image(self) -> QImage:
        """The cached composite (what the canvas shows under the overlays), brought up to date."""
        self._refresh()
        return self._image

    # -- preview overlay ------------------------------------------------------------------------------
    def set_preview(self, pixels: np.ndarray) -> None:
        """Show a generation step's preview (H×W×3 uint8) over the canvas until cleared.

        Every frame that reaches the canvas is painted: one not painted yet when the next arrives (Qt
        would merge the two repaints) is painted first. The engine host already keeps at most one frame
        waiting, so this paints no more often than frames arrive."""
        self._paint_pending_frame()
        self._preview = array_to_qimage(pixels)
        self._preview_pending = True
        self.update()

    def clear_preview(self) -> None:
        """Remove the preview overlay (the run ended, was cancelled or failed).

        A frame that arrived but was not painted yet is painted once first: the last step's frame often
        comes just before the result, and every frame that reached the canvas should be seen.
        """
        self._paint_pending_frame()
        self._preview = None
        self._preview_pending = False
        self.update()

    def _paint_pending_frame(self) -> None:
        if self._preview_pending and self.isVisible():
            self.repaint()

    @property
    def has_preview(self) -> bool:
        """True while a preview frame is shown."""
        return self._preview is not None

    # -- view transform -------------------------------------------------------------------------------
    def doc_rect(self) -> QRectF:
        """Where the document lies in widget coordinates."""
        return QRectF(
            self.offset, self.offset + QPointF(self.document.width, self.document.height) * self.zoom
        )

    def to_doc(self, pos: QPointF) -> QPointF:
        """Widget coordinates → document pixel coordinates."""
        return (pos - self.offset) / self.zoom

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the document point under `anchor` (default: the widget centre) in place."""
        zoom = min(max(zoom, MIN_ZOOM), MAX_ZOOM)
        anchor = QPointF(self.width() / 2, self.height() / 2) if anchor is None else anchor
        fixed = self.to_doc(anchor)
        self.zoom = zoom
        self.offset = anchor - fixed * zoom
        self.zoom_changed.emit(zoom)
        self.update()

    def fit(self) -> None:
        """Zoom so the whole document fits the widget with a margin, centred."""
        w, h = self.document.width, self.document.height
        zoom = min((self.width() - 24) / w, (self.height() - 24) / h) if w and h else 1.0
        self.zoom = min(max(zoom, MIN_ZOOM), MAX_ZOOM)
        self._center()

    def actual_size(self) -> None:
        """Zoom to 100 %, centred."""
        self._auto_fit = False
        self.zoom = 1.0
        self._center()

    def _center(self) -> None:
        size = QPointF(self.document.width, self.document.height) * self.zoom
        self.offset = QPointF((self.width() - size.x()) / 2, (self.height() - size.y()) / 2)
        self.zoom_changed.emit(self.zoom)
        self.update()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Keep the document fitted until the person zooms or pans."""
        if self._auto_fit:
            self.fit()
        super().resizeEvent(event)

    def set_mask_visible(self, on: bool) -> None:
        """Show or hide the red mask overlay; the mask and what inpaint repaints do not change."""
        if bool(on) != self.mask_visible:
            self.mask_visible = bool(on)
            self.update()

    def set_overlay(
        self, pixels: np.ndarray | None, legend: list[tuple[tuple[int, int, int], str]] | None = None
    ) -> None:
        """Show an H×W×3 picture over the document (stretched to it) with a legend, or none."""
        self._overlay = None if pixels is None else array_to_qimage(pixels)
        self._legend = list(legend or []) if pixels is not None else []
        self.update()

    @property
    def overlay_shown(self) -> bool:
        """Whether an overlay (the attribution map) is on the canvas."""
        return self._overlay is not None

    def _paint_legend(self, painter: QPainter) -> None:
        metrics = painter.fontMetrics()
        row = metrics.height() + 4
        width = max(metrics.horizontalAdvance(text) for _, text in self._legend) + row + 16
        box = QRectF(8, 8, width, row * len(self._legend) + 8)
        painter.fillRect(box, QColor(255, 255, 255, 225))
        painter.setPen(QPen(QColor(40, 40, 40), 1))
        for n, (rgb, text) in enumerate(self._legend):
            top = box.top() + 4 + n * row
            painter.fillRect(QRectF(box.left() + 6, top + 2, row - 6, row - 6), QColor(*rgb))
            painter.drawText(QPointF(box.left() + row + 6, top + metrics.ascent() + 2), text)

    # -- painting the widget --------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        """Draw the composite, the mask and preview overlays, and the brush outline."""
        self._refresh()
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(58, 58, 62))
        target = self.doc_rect()
        # Smooth up to 400 %: generated pictures look right; beyond it a painter wants to see pixels.
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.zoom < 4.0)
        painter.drawImage(target, self._image)
        if self._preview is not None:
            smooth = painter.testRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(target, self._preview)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            # Without a preview the stroke is already in the composite; with one it would be hidden.
            if self._stroke_image is not None:
                painter.drawImage(target, self._stroke_image)
            # Counted once, and only when this paint put the whole frame on screen (not one stroke's rect).
            if self._preview_pending and event.rect().contains(
                target.toAlignedRect().intersected(self.rect())
            ):
                self.frames_painted += 1
                self._preview_pending = False
        if self._overlay is not None:
            painter.setOpacity(0.75)
            painter.drawImage(target, self._overlay)
            painter.setOpacity(1.0)
        # The mask is what the person is editing, so it stays above the preview too.
        if self._mask_image is not None and self.mask_visible:
            painter.drawImage(target, self._mask_image)
        painter.setPen(QPen(QColor(30, 30, 30), 1))
        painter.drawRect(target.adjusted(-1, -1, 0, 0))
        if self._hover is not None and self.tool in (BRUSH, ERASER, MASK) and self._pan_from is None:
            radius = self.brush.size * self.zoom / 2
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(QPen(QColor(255, 255, 255, 200), 1))
            painter.drawEllipse(self._hover, radius, radius)
            painter.setPen(QPen(QColor(0, 0, 0, 200), 1))
            painter.drawEllipse(self._hover, radius + 1, radius + 1)
        if self._overlay is not None and self._legend:
            self._paint_legend(painter)
        painter.end()

    # -- input ------------------------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        """Start a stroke, a pick or a pan."""
        self._press(event.position(), event.button(), event.modifiers(), 1.0)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        """Extend the stroke or pan; move the brush outline."""
        self._move(event.position(), 1.0)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        """End the stroke (one document operation) or the pan."""
        self._release(event.button())

    def tabletEvent(self, event: QTabletEvent) -> None:  # noqa: N802 - Qt override
        """Pen input: pressure scales the dab size."""
        kind = event.type()
        if kind == QTabletEvent.Type.TabletPress:
            self._press(event.position(), event.button(), event.modifiers(), event.pressure())
        elif kind == QTabletEvent.Type.TabletMove:
            self._move(event.position(), event.pressure())
        elif kind == QTabletEvent.Type.TabletRelease:
            self._release(event.button())
        event.accept()

    def _press(self, pos: QPointF, button, modifiers, pressure: float) -> None:
        self.setFocus()
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._space):
            self._pan_from = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if button != Qt.MouseButton.LeftButton:
            return
        point = self.to_doc(pos)
        if self.tool == PICKER:
            self._pick(point)
            return
        layer = self.document.active
        if self.tool != MASK and layer is None:
            return
        if self.tool != MASK and layer is not None and not (layer.visible and layer.opacity > 0):
            self.notice.emit(f"“{layer.name}” is hidden: tick it in Layers to see what you paint on it")
        erase = self.tool == MASK and bool(modifiers & Qt.KeyboardModifier.AltModifier)
        self._stroke = Stroke(self.tool, self.brush, self.document.width, self.document.height, erase)
        self._stroke_after = None
        self._stroke_exact = True
        self._show_stroke(self._stroke.add_point(point, pressure))

    def _move(self, pos: QPointF, pressure: float) -> None:
        if self._pan_from is not None:
            self._auto_fit = False
            self.offset = self.offset + (pos - self._pan_from)
            self._pan_from = pos
            self.update()
            return
        old = self._hover
        self._hover = pos
        if self._overlay is not None:
            point = self.to_doc(pos)
            self.hovered.emit(int(point.x()), int(point.y()))
        if self._stroke is not None:
            self._show_stroke(self._stroke.add_point(self.to_doc(pos), pressure))
        elif self.tool == PICKER and self._pressed_left():
            self._pick(self.to_doc(pos))
        if self.tool in (BRUSH, ERASER, MASK):
            r = self.brush.size * self.zoom / 2 + 3
            for centre in (old, pos):
                if centre is not None:
                    self.update(QRectF(centre.x() - r, centre.y() - r, 2 * r, 2 * r).toAlignedRect())

    def _pressed_left(self) -> bool:
        from PySide6.QtWidgets import QApplication

        return bool(QApplication.mouseButtons() & Qt.MouseButton.LeftButton)

    def _release(self, button) -> None:
        if self._pan_from is not None and button in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._pan_from = None
            self.setCursor(Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.CrossCursor)
            return
        if self._stroke is not None and button == Qt.MouseButton.LeftButton:
            self.commit_stroke()

    def leaveEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Hide the brush outline."""
        self._hover = None
        self.update()
        super().leaveEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        """Zoom about the cursor."""
        steps = event.angleDelta().y() / 120.0
        if steps:
            self._auto_fit = False
            self.set_zoom(self.zoom * (1.25**steps), event.position())
        event.accept()

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Space held: the left button pans."""
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Space released: the left button paints again."""
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            if self._pan_from is None:
                self.setCursor(Qt.CursorShape.CrossCursor)
            return
        super().keyReleaseEvent(event)

    # -- strokes ------------------------------------------------------------------------------------------
    def _pick(self, point: QPointF) -> None:
        x, y = int(point.x()), int(point.y())
        if 0 <= x < self.document.width and 0 <= y < self.document.height:
            self._refresh()
            r, g, b = (int(v) for v in self._compositor.rgb[y, x])
            self.color_picked.emit(QColor(r, g, b))

    def _show_stroke(self, rect: QRect) -> None:
        """Redraw the part of the cached composite a stroke segment touched, as if committed."""
        stroke = self._stroke
        if stroke is None or rect.isEmpty():
            return
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        doc = self.document
        if stroke.tool == MASK:
            self._paint_mask(x, y, stroke.apply(doc.mask[y : y + h, x : x + w], rect))
            self.update()
            return
        self._recomposite(rect, stroke)
        self._overlay_stroke(rect, stroke)
        self.update(self._view_rect(rect))

    def _view_rect(self, rect: QRect) -> QRect:
        """The widget rectangle that shows a document rectangle (with a margin for smoothing)."""
        view = QRectF(
            self.offset + QPointF(rect.x(), rect.y()) * self.zoom,
            QPointF(rect.size().width(), rect.size().height()) * self.zoom,
        )
        return view.toAlignedRect().adjusted(-2, -2, 2, 2)

    def _overlay_stroke(self, rect: QRect, stroke: Stroke) -> None:
        """Copy one rectangle of the composite (stroke applied) into the stroke overlay, alpha = coverage."""
        rect = rect.intersected(QRect(0, 0, self.document.width, self.document.height))
        if rect.isEmpty():
            return
        if self._stroke_rgba is None:
            self._stroke_rgba = np.zeros((self.document.height, self.document.width, 4), np.uint8)
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        # Coverage, not coverage × opacity: where the brush went, the overlay shows exactly what the
        # document will show (the composite already blends the stroke at its opacity).
        self._stroke_rgba[y : y + h, x : x + w, :3] = self._compositor.rgb[y : y + h, x : x + w]
        self._stroke_rgba[y : y + h, x : x + w, 3] = qimage_to_array(stroke.coverage.copy(rect))
        rgba = self._stroke_rgba
        # Wraps the array without copying, like the composite.
        self._stroke_image = QImage(rgba.data, rgba.shape[1], rgba.shape[0], rgba.strides[0], MASK_FORMAT)

    def _drop_stroke_overlay(self) -> None:
        self._stroke_image = None
        self._stroke_rgba = None

    def _recomposite(self, rect: QRect, stroke: Stroke) -> None:
        """Redo one rectangle of the cached composite with the stroke in progress applied."""
        rect = rect.intersected(QRect(0, 0, self.document.width, self.document.height))
        layer = self.document.active
        if rect.isEmpty() or layer is None:
            return
        self._refresh()
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        pixels = stroke.apply(layer.region(x, y, w, h), rect)
        if self._stroke_after is None:
            self._stroke_after = np.empty((self.document.height, self.document.width, 4), np.uint8)
            self._stroke_base = _state(layer)
        self._stroke_after[y : y + h, x : x + w] = pixels
        self._compositor.update_region(self.document.layers, (x, y, w, h), replace=(layer.id, pixels))
        self._wrap_rgb()

    def commit_stroke(self) -> None:
        """End the stroke in progress with ONE document operation (one undo step)."""
        stroke, self._stroke = self._stroke, None
        kept, self._stroke_after = self._stroke_after, None
        self._drop_stroke_overlay()
        if stroke is None or stroke.bounds.isEmpty():
            return
        b = stroke.bounds
        x, y, w, h = b.x(), b.y(), b.width(), b.height()
        doc = self.document
        if stroke.tool == MASK:
            after = stroke.apply(doc.mask[y : y + h, x : x + w], b)
            doc.paint_mask(x, y, after, label="Erase mask" if stroke.erase else "Mask")
        elif doc.active is not None:
            layer = doc.active
            if kept is not None and self._stroke_base == _state(layer):  # the layer is as the stroke found it
                # Pixels inside the bounds that no segment reached were never written: they keep the layer's.
                after = np.where(
                    stroke.reached(b)[..., None], kept[y : y + h, x : x + w], layer.region(x, y, w, h)
                )
            else:
                after = stroke.apply(layer.region(x, y, w, h), b)
            # Every segment was composited with the stroke applied: the composite already shows this.
            self._shown = b if self._stroke_exact else None
            try:
                doc.paint(layer.id, x, y, after, label="Erase" if stroke.tool == ERASER else "Brush stroke")
            finally:
                self._shown = None
        self.stroke_committed.emit(stroke.tool)

    def cancel_stroke(self) -> None:
        """Drop the stroke in progress without touching the document."""
        if self._stroke is not None:
            self._dirty_rects.append(self._stroke.bounds)  # shown as if painted: show the layers again
            self._stroke = None
            self._stroke_after = None
            self._drop_stroke_overlay()
            self._rebuild_mask()
            self.update()


def _state(layer: Layer) -> tuple:
    """What a change to a layer's pixels or place changes (its revision counter only grows)."""
    return (layer.id, layer.rev, id(layer.pixels), layer.x, layer.y)
