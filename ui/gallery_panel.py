"""The gallery dock: a thumbnail per result with its recipe as tooltip; click restores the recipe,
"Use as init" puts the image back on the canvas for image-to-image.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from studio.gallery import Result
from studio.session import Session
from ui.canvas import array_to_qimage
from ui.layers_panel import untinted_icon

THUMB = 96


def recipe_text(result: Result) -> str:
    """The recipe of a result as a short rich-text tooltip."""
    r = result.request
    rows = [
        ("Prompt", r.prompt or "(none)"),
        ("Negative", r.negative_prompt),
        ("Engine", r.engine + (f" · {result.extras.get('model')}" if result.extras.get("model") else "")),
        ("Size", f"{r.width} × {r.height}"),
        ("Seed", str(r.seed)),
        ("Steps", str(r.steps)),
        ("Guidance", f"{r.guidance:g}"),
        ("Mode", "inpaint" if r.mask is not None else "img2img" if r.init_image is not None else "txt2img"),
    ]
    if r.init_image is not None:
        rows.append(("Strength", f"{r.strength:g}"))
    if r.engine == "patch":
        rows.append(("Locality", f"{r.locality:g}"))
    if r.variation_strength:
        rows.append(("Variation", f"{r.variation_strength:g} (seed {r.variation_seed})"))
    if r.blend:
        rows.append(("Blend", f"{r.blend:g} towards “{r.prompt_b}”"))
    for c in r.concepts:
        rows.append(("Concept", f"{c.negative} → {c.positive}: {c.weight:g}"))
    body = "".join(f"<tr><td><b>{k}</b></td><td>{html.escape(v)}</td></tr>" for k, v in rows if v)
    return f"<table>{body}</table><i>Click to restore these settings</i>"


class GalleryPanel(QWidget):
    """Thumbnails of the session's results, newest first."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setSpacing(4)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.use_as_init = QPushButton("Use as init")
        self.use_as_init.setToolTip("Put the selected result on the canvas as a new layer for image-to-image")
        self.use_as_init.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.use_as_init)
        self.list.itemClicked.connect(self._clicked)
        self.list.currentItemChanged.connect(lambda item, _old: self.use_as_init.setEnabled(item is not None))
        self.list.customContextMenuRequested.connect(self._menu)
        self.use_as_init.clicked.connect(self._use_selected)
        gallery = session.gallery
        gallery.added.connect(self.add)
        gallery.removed.connect(self._removed)
        gallery.reset.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild from the gallery (an opened project)."""
        self.list.clear()
        for result in self.session.gallery.results:
            self.add(result)

    def add(self, result: Result) -> None:
        """Show a new result first in the list (a grid's cells show inside their grid, not here)."""
        if result.group is not None:
            return
        pixmap = QPixmap.fromImage(array_to_qimage(result.image)).scaled(
            THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        grid = result.request.grid
        label = f"seed {result.request.seed}"
        if grid is not None and result.cells:
            columns, rows = grid.shape
            label = f"grid {columns}×{rows}"
        elif result.request.upscale is not None:
            label = f"×{result.request.upscale.factor} seed {result.request.seed}"
        item = QListWidgetItem(untinted_icon(pixmap), label)
        item.setData(Qt.ItemDataRole.UserRole, result.id)
        tip = recipe_text(result)
        item.setToolTip(
            tip.replace("Click to restore these settings", "Click to open the grid") if result.cells else tip
        )
        self.list.insertItem(0, item)

    def item_for(self, result_id: str) -> QListWidgetItem | None:
        """The list item showing a result."""
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(Qt.ItemDataRole.UserRole) == result_id:
                return item
        return None

    def _removed(self, result_id: str) -> None:
        item = self.item_for(result_id)
        if item is not None:
            self.list.takeItem(self.list.row(item))

    def _clicked(self, item: QListWidgetItem) -> None:
        result = self.session.gallery.get(item.data(Qt.ItemDataRole.UserRole))
        if result is not None and result.cells:
            self.open_grid(result)
        else:
            self.session.runs.restore(item.data(Qt.ItemDataRole.UserRole))

    def open_grid(self, entry: Result) -> QWidget:
        """Open a grid entry into its cells (a window beside the studio's)."""
        from ui.grid_view import GridView

        view = GridView(self.session, entry, self.window())
        view.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        view.show()
        return view

    def _use_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.session.runs.use_as_init(item.data(Qt.ItemDataRole.UserRole))

    def _menu(self, pos) -> None:  # noqa: ANN001
        item = self.list.itemAt(pos)
        if item is None:
            return
        menu = QMenu(self)
        result = self.session.gallery.get(item.data(Qt.ItemDataRole.UserRole))
        if result is not None and result.cells:
            menu.addAction("Open grid", lambda: self.open_grid(result))
            menu.addAction("Restore the grid's settings", lambda: self.session.runs.restore(result))
        else:
            menu.addAction("Restore settings", lambda: self._clicked(item))
            menu.addAction(
                "Use as init", lambda: self.session.runs.use_as_init(item.data(Qt.ItemDataRole.UserRole))
            )
            if result is not None:
                menu.addAction("Upscale…", lambda: self._upscale(result))
        menu.exec(self.list.viewport().mapToGlobal(pos))

    def _upscale(self, result: Result) -> None:
        from ui.image_dialogs import upscale_result_dialog

        upscale_result_dialog(self, self.session, result)
