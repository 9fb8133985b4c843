"""The tool bar of the canvas: tool choice (B, E, I, M), brush size ([ ]), hardness, opacity and colour."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import QColorDialog, QLabel, QSpinBox, QToolBar, QToolButton

from ui.canvas import CanvasView
from ui.tools import BRUSH, ERASER, MASK, PICKER

TOOL_ACTIONS = (
    (BRUSH, "Brush", "B", "Paint on the active layer (B)"),
    (ERASER, "Eraser", "E", "Erase the active layer (E)"),
    (PICKER, "Picker", "I", "Pick a colour from the canvas (I)"),
    (MASK, "Mask", "M", "Paint the inpainting mask, Alt to erase it (M)"),
)


def swatch(color: QColor) -> QIcon:
    """A square icon of one colour."""
    pixmap = QPixmap(18, 18)
    pixmap.fill(color)
    return QIcon(pixmap)


class BrushBar(QToolBar):
    """Chooses the canvas tool and brush settings; every value goes straight to the canvas."""

    def __init__(self, canvas: CanvasView, parent=None) -> None:  # noqa: ANN001
        super().__init__("Brush", parent)
        self.setObjectName("brush-bar")
        self.canvas = canvas
        self.tool_actions: dict[str, QAction] = {}
        group = QActionGroup(self)
        for key, text, shortcut, tip in TOOL_ACTIONS:
            action = QAction(text, self, checkable=True, shortcut=QKeySequence(shortcut), toolTip=tip)
            action.triggered.connect(lambda _on=False, k=key: self.set_tool(k))
            group.addAction(action)
            self.addAction(action)
            self.tool_actions[key] = action
        self.tool_actions[BRUSH].setChecked(True)
        self.addSeparator()
        self.size_box = self._spin("Size", 1, 500, int(canvas.brush.size), " px", "Brush size ([ and ])")
        self.hardness = self._spin(
            "Hardness", 0, 100, int(canvas.brush.hardness * 100), " %", "Edge hardness"
        )
        self.opacity = self._spin("Opacity", 1, 100, int(canvas.brush.opacity * 100), " %", "Stroke opacity")
        self.color_button = QToolButton()
        self.color_button.setToolTip("Brush colour")
        self.color_button.clicked.connect(self._choose_color)
        self.addWidget(self.color_button)
        self.smaller = QAction("Smaller brush", self, shortcut=QKeySequence("["))
        self.bigger = QAction("Bigger brush", self, shortcut=QKeySequence("]"))
        self.smaller.triggered.connect(
            lambda: self.size_box.setValue(max(1, round(self.size_box.value() / 1.25)))
        )
        self.bigger.triggered.connect(
            lambda: self.size_box.setValue(
                max(self.size_box.value() + 1, round(self.size_box.value() * 1.25))
            )
        )
        self.size_box.valueChanged.connect(self._brush_changed)
        self.hardness.valueChanged.connect(self._brush_changed)
        self.opacity.valueChanged.connect(self._brush_changed)
        canvas.color_picked.connect(self.set_color)
        self.set_color(QColor(*canvas.brush.color))

    def _spin(self, label: str, low: int, high: int, value: int, suffix: str, tip: str) -> QSpinBox:
        box = QSpinBox()
        box.setRange(low, high)
        box.setValue(value)
        box.setSuffix(suffix)
        box.setToolTip(tip)
        box.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # keep B/E/I/M and [ ] for the canvas
        self.addWidget(QLabel(f" {label} "))
        self.addWidget(box)
        return box

    def set_tool(self, tool: str) -> None:
        """Make `tool` the canvas tool."""
        self.canvas.tool = tool
        self.tool_actions[tool].setChecked(True)
        self.canvas.update()

    def set_color(self, color: QColor) -> None:
        """Paint with `color` from now on."""
        self.canvas.brush.color = (color.red(), color.green(), color.blue())
        self.color_button.setIcon(swatch(color))

    def _choose_color(self) -> None:
        color = QColorDialog.getColor(QColor(*self.canvas.brush.color), self, "Brush colour")
        if color.isValid():
            self.set_color(color)

    def _brush_changed(self) -> None:
        brush = self.canvas.brush
        brush.size = float(self.size_box.value())
        brush.hardness = self.hardness.value() / 100.0
        brush.opacity = self.opacity.value() / 100.0
        self.canvas.update()
