"""A gallery grid opened into its cells: the x values over the columns, the y values beside the rows.

Clicking a cell puts its exact recipe back into the panels (Generate then makes it again); its menu puts it
on the canvas or upscales it. The grid exports as one labelled PNG carrying the grid's recipe.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.gallery import Result
from studio.grid_sheet import save_grid
from studio.session import Session
from ui.canvas import array_to_qimage

CELL = 128


class GridView(QDialog):
    """The cells of one gallery grid, laid out as the grid ran them."""

    def __init__(self, session: Session, entry: Result, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ui.gallery_panel import recipe_text

        self.session = session
        self.entry = entry
        self.cells = session.gallery.cells_of(entry.id)
        grid = entry.request.grid
        assert grid is not None
        self.setWindowTitle(f"Grid: {entry.request.prompt[:60] or 'untitled'}")
        self.setObjectName("grid-view")
        table = QGridLayout()
        table.setSpacing(4)
        for column, value in enumerate(grid.x.values):
            table.addWidget(_label(grid.x.value_label(value)), 0, column + 1)
        if grid.y is not None:
            for row, value in enumerate(grid.y.values):
                table.addWidget(_label(grid.y.value_label(value)), row + 1, 0)
        self.buttons: list[QToolButton] = []
        for cell, (column, row) in zip(self.cells, grid.positions(), strict=False):
            button = QToolButton()
            button.setObjectName("grid-cell")
            button.setIconSize(QSize(CELL, CELL))
            pixmap = QPixmap.fromImage(array_to_qimage(cell.image)).scaled(
                CELL, CELL, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            button.setIcon(pixmap)
            button.setToolTip(recipe_text(cell))
            button.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            button.clicked.connect(lambda _checked=False, c=cell: self.restore(c))
            button.customContextMenuRequested.connect(lambda _pos, c=cell, b=button: self._menu(c, b))
            table.addWidget(button, row + 1, column + 1)
            self.buttons.append(button)
        hint = QLabel("Click a cell to put its settings back in the panels; right-click for more.")
        hint.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.export_button = QPushButton("Export labelled PNG…")
        buttons.addButton(self.export_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.clicked.connect(lambda _checked=False: self.export())
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(table)
        layout.addWidget(hint)
        layout.addWidget(buttons)

    def restore(self, cell: Result) -> None:
        """Put a cell's recipe back into the panels."""
        self.session.runs.restore(cell)

    def export(self, path: str | None = None) -> str | None:
        """Save the grid as one labelled PNG (asks where unless given); the path written, or None."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export grid", "grid.png", "PNG images (*.png)")
        if not path:
            return None
        try:
            save_grid(path, self.entry, self.cells)
        except (OSError, ValueError) as exc:
            self.session.runs.error.emit(f"The grid could not be exported: {exc}")
            return None
        return path

    def _menu(self, cell: Result, button: QToolButton) -> None:
        from ui.image_dialogs import upscale_result_dialog

        menu = QMenu(self)
        menu.addAction("Restore settings", lambda: self.restore(cell))
        menu.addAction("Use as init", lambda: self.session.runs.use_as_init(cell))
        menu.addAction("Upscale…", lambda: upscale_result_dialog(self, self.session, cell))
        menu.exec(button.mapToGlobal(button.rect().center()))


def _label(text: str) -> QLabel:
    label = QLabel(text)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setWordWrap(True)
    return label
