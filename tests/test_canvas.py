"""The canvas widget: strokes go through the document as one undo step each, views pan and zoom."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QInputDevice, QPointingDevice, QTabletEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from studio.document import Document
from ui.canvas import CanvasView
from ui.tools import ERASER, MASK, PICKER


def make_canvas(qtbot, width: int = 64, height: int = 48) -> CanvasView:
    doc = Document(width, height)
    canvas = CanvasView(doc)
    qtbot.addWidget(canvas)
    canvas.resize(width + 24, height + 24)  # zoom 1: widget pixels map 1:1 onto document pixels
    canvas.show()
    qtbot.waitExposed(canvas)
    canvas.actual_size()
    return canvas


def shown(canvas: CanvasView) -> np.ndarray:
    """The canvas's cached composite as an H×W×3 array."""
    image = canvas.composite_image().convertToFormat(QImage.Format.Format_RGB888)
    h, w = image.height(), image.width()
    raw = np.frombuffer(image.constBits(), np.uint8, count=h * image.bytesPerLine())
    return raw.reshape(h, image.bytesPerLine())[:, : w * 3].reshape(h, w, 3).copy()


def drag(
    qtbot, canvas: CanvasView, points: list[tuple[int, int]], mods=Qt.KeyboardModifier.NoModifier
) -> None:
    """Press at the first document point, move through the rest, release at the last."""
    off = canvas.offset

    def at(p: tuple[int, int]) -> QPoint:
        return QPoint(int(off.x() + p[0]), int(off.y() + p[1]))

    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, mods, at(points[0]))
    for p in points[1:]:
        qtbot.mouseMove(canvas, at(p))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, mods, at(points[-1]))


def test_brush_stroke_is_one_undo_step_and_undo_redo_are_exact(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("ink")
    before = layer.pixels.copy()
    canvas.brush.size, canvas.brush.color = 8, (200, 20, 30)
    depth = len(doc.history.done)
    drag(qtbot, canvas, [(10, 10), (20, 12), (30, 14), (40, 20)])
    assert len(doc.history.done) == depth + 1 and doc.undo_label == "Brush stroke"
    painted = layer.pixels.copy()
    assert not np.array_equal(painted, before)
    assert tuple(painted[12, 20]) == (200, 20, 30, 255)
    assert painted[40, 5, 3] == 0  # far from the stroke: untouched
    # The canvas shows the stroke (composite over white).
    assert canvas.composite_image().pixelColor(20, 12) == QColor(200, 20, 30)
    assert np.array_equal(shown(canvas), doc.composite())  # only the stroke's rectangle was redone
    assert doc.undo()
    assert np.array_equal(layer.pixels, before)
    assert np.array_equal(shown(canvas), doc.composite())
    assert doc.redo()
    assert np.array_equal(layer.pixels, painted)
    assert np.array_equal(shown(canvas), doc.composite())


def test_eraser_and_mask_brush(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("fill")
    doc.fill(layer.id, (0, 0, 255, 255))
    canvas.tool, canvas.brush.size, canvas.brush.hardness = ERASER, 10, 1.0
    drag(qtbot, canvas, [(30, 20), (34, 20)])
    assert layer.pixels[20, 32, 3] == 0 and layer.pixels[5, 5, 3] == 255
    canvas.tool = MASK
    drag(qtbot, canvas, [(10, 10), (12, 10)])
    assert doc.mask[10, 11] == 255 and doc.mask[40, 60] == 0
    assert canvas._mask_image is not None  # shown as the red overlay
    drag(qtbot, canvas, [(10, 10), (12, 10)], Qt.KeyboardModifier.AltModifier)
    assert doc.mask[10, 11] == 0 and canvas._mask_image.pixelColor(11, 10).alpha() == 0
    doc.undo()
    assert doc.mask[10, 11] == 255 and canvas._mask_image.pixelColor(11, 10).alpha() > 100


def test_picker_takes_the_visible_colour(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    doc.fill(doc.active_id, (10, 120, 30, 255))
    picked: list[QColor] = []
    canvas.color_picked.connect(picked.append)
    canvas.tool = PICKER
    drag(qtbot, canvas, [(5, 5)])
    assert picked and picked[-1] == QColor(10, 120, 30)


def test_preview_frames_are_counted_when_painted_and_zoom_keeps_the_anchor(qtbot):
    canvas = make_canvas(qtbot)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[...] = (0, 200, 0)
    canvas.set_preview(frame)
    qtbot.waitUntil(lambda: canvas.frames_painted == 1)
    shot = canvas.grab().toImage()
    centre = canvas.doc_rect().center().toPoint()
    assert shot.pixelColor(centre) == QColor(0, 200, 0)
    canvas.clear_preview()
    anchor = canvas.doc_rect().topLeft()
    before = canvas.to_doc(anchor)
    canvas.set_zoom(4.0, anchor)
    assert canvas.zoom == 4.0 and canvas.to_doc(anchor) == before
    canvas.fit()
    assert canvas.doc_rect().width() <= canvas.width()


def test_middle_button_and_space_drag_pan_and_the_wheel_zooms(qtbot):
    canvas = make_canvas(qtbot)
    start = QPointF(canvas.offset)
    qtbot.mousePress(canvas, Qt.MouseButton.MiddleButton, pos=QPoint(30, 30))
    qtbot.mouseMove(canvas, QPoint(40, 35))
    qtbot.mouseRelease(canvas, Qt.MouseButton.MiddleButton, pos=QPoint(40, 35))
    assert canvas.offset - start == QPointF(10, 5)
    before = canvas.document.layers[0].pixels.copy()
    qtbot.keyPress(canvas, Qt.Key.Key_Space)
    drag(qtbot, canvas, [(20, 20), (25, 20)])  # a pan, not a stroke
    qtbot.keyRelease(canvas, Qt.Key.Key_Space)
    assert canvas.offset - start == QPointF(15, 5)
    assert np.array_equal(canvas.document.layers[0].pixels, before) and not canvas.document.can_undo
    zoom = canvas.zoom
    wheel = QWheelEvent(
        QPointF(30, 30),
        canvas.mapToGlobal(QPointF(30, 30)),
        QPoint(),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(canvas, wheel)
    assert canvas.zoom == zoom * 1.25


def test_tablet_pressure_scales_the_brush(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("ink")
    canvas.brush.size, canvas.brush.hardness = 20, 1.0
    pen = QPointingDevice(
        "pen",
        1,
        QInputDevice.DeviceType.Stylus,
        QPointingDevice.PointerType.Pen,
        QInputDevice.Capability.Position | QInputDevice.Capability.Pressure,
        1,
        3,
    )

    def stroke(y: int, pressure: float) -> int:
        """Paint a horizontal line at document row y; return how many rows it covered."""
        for kind, x in (
            (QEvent.Type.TabletPress, 10),
            (QEvent.Type.TabletMove, 50),
            (QEvent.Type.TabletRelease, 50),
        ):
            pos = canvas.offset + QPointF(x, y)
            button = Qt.MouseButton.LeftButton
            buttons = Qt.MouseButton.NoButton if kind == QEvent.Type.TabletRelease else button
            event = QTabletEvent(
                kind,
                pen,
                pos,
                canvas.mapToGlobal(pos),
                pressure,
                0,
                0,
                0,
                0,
                0,
                Qt.KeyboardModifier.NoModifier,
                button,
                buttons,
            )
            QApplication.sendEvent(canvas, event)
        return int((layer.pixels[:, 30, 3] > 0).sum())

    light = stroke(12, 0.25)
    assert doc.can_undo and 3 <= light <= 8  # a quarter of the 20 px brush
    doc.undo()
    assert stroke(30, 1.0) >= 19


def test_a_stroke_in_progress_and_the_mask_show_above_the_preview(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("ink")
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[...] = (0, 200, 0)
    canvas.set_preview(frame)
    qtbot.waitUntil(lambda: canvas.frames_painted == 1)
    canvas.brush.size, canvas.brush.hardness, canvas.brush.color = 8, 1.0, (200, 20, 30)
    off = canvas.offset

    def at(x: int, y: int) -> QPoint:
        return QPoint(int(off.x() + x), int(off.y() + y))

    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=at(10, 10))
    qtbot.mouseMove(canvas, at(30, 10))
    assert canvas.has_preview
    shot = canvas.grab().toImage()
    assert shot.pixelColor(at(20, 10)) == QColor(200, 20, 30)  # the brush, over the preview
    assert shot.pixelColor(at(20, 30)) == QColor(0, 200, 0)  # away from it: still the preview
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=at(30, 10))
    assert tuple(layer.pixels[10, 20]) == (200, 20, 30, 255)  # committed as usual
    canvas.tool = MASK
    drag(qtbot, canvas, [(40, 30), (50, 30)])
    mask_shot = canvas.grab().toImage().pixelColor(at(42, 30))  # inside the stroke, off the brush outline
    assert canvas.has_preview and mask_shot.red() > 90 and mask_shot.green() < 150  # 45 % red over green


def test_a_change_during_a_stroke_still_leaves_the_canvas_equal_to_the_document(qtbot):
    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("ink")
    canvas.brush.size, canvas.brush.color = 10, (10, 200, 30)
    off = canvas.offset
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(off.x()) + 5, int(off.y()) + 5))
    qtbot.mouseMove(canvas, QPoint(int(off.x()) + 30, int(off.y()) + 20))
    other = np.zeros((48, 64, 4), np.uint8)
    other[10:30, 10:40] = (0, 0, 255, 128)
    doc.add_layer("arrived meanwhile", other, index=0)  # e.g. a result landing mid-stroke
    canvas.composite_image()  # the canvas paints it (without the stroke's earlier segments)
    doc.set_active(layer.id)
    qtbot.mouseMove(canvas, QPoint(int(off.x()) + 50, int(off.y()) + 30))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(int(off.x()) + 50, int(off.y()) + 30))
    assert layer.pixels[..., 3].any()
    assert np.array_equal(shown(canvas), doc.composite())


def test_releasing_a_stroke_commits_what_its_segments_showed_without_blending_it_again(qtbot, monkeypatch):
    from ui.tools import Stroke

    canvas = make_canvas(qtbot)
    doc = canvas.document
    layer = doc.add_layer("ink")
    doc.paint(layer.id, 0, 0, np.random.default_rng(3).integers(0, 255, (48, 64, 4), dtype=np.uint8))
    canvas.brush.size, canvas.brush.color, canvas.brush.opacity = 9, (200, 40, 10), 0.7
    off = canvas.offset
    at = lambda x, y: QPoint(int(off.x()) + x, int(off.y()) + y)  # noqa: E731
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=at(5, 5))
    for x, y in ((20, 30), (40, 8), (22, 12), (60, 40)):  # the path crosses itself: coverage keeps growing
        qtbot.mouseMove(canvas, at(x, y))
    stroke = canvas._stroke
    b = stroke.bounds
    expected = stroke.apply(layer.region(b.x(), b.y(), b.width(), b.height()), b)  # one blend of the whole
    blends: list[int] = []
    original = Stroke.apply
    monkeypatch.setattr(Stroke, "apply", lambda self, *a: (blends.append(1), original(self, *a))[1])
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=at(60, 40))
    assert blends == []  # the release reuses the segments' results
    assert np.array_equal(layer.region(b.x(), b.y(), b.width(), b.height()), expected)
    assert np.array_equal(shown(canvas), doc.composite())


def test_every_preview_frame_that_reaches_the_canvas_is_painted_once(qtbot):
    canvas = make_canvas(qtbot)
    frames = [np.full((48, 64, 3), v, np.uint8) for v in (40, 120, 200)]
    canvas.set_preview(frames[0])
    qtbot.waitUntil(lambda: canvas.frames_painted == 1)  # the event loop paints it, as any update
    canvas.set_preview(frames[1])
    canvas.set_preview(frames[2])  # arrived before the second was painted: Qt alone would merge the two
    assert canvas.frames_painted == 2
    canvas.clear_preview()  # the run ended before the last frame's paint: it is painted first
    assert canvas.frames_painted == 3 and not canvas.has_preview
    canvas.repaint()
    assert canvas.frames_painted == 3  # a repaint of the same picture is no new frame
