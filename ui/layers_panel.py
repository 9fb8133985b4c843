"""The layers dock: list (top layer first) with visibility, rename, opacity, and add/delete/duplicate/reorder;
a right-click menu renames, duplicates, deletes or merges down.

Every change is a Document operation, so it lands on the one undo stack.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QSignalBlocker, QSize, Qt, QTimer
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.document import Document
from studio.layers import Layer
from ui.canvas import array_to_qimage
from ui.prompt_panel import tool_button

THUMB = 40


def untinted_icon(pixmap: QPixmap) -> QIcon:
    """An icon that looks the same selected: Qt tints a selected icon, and colours must stay judgeable."""
    icon = QIcon()
    for mode in (QIcon.Mode.Normal, QIcon.Mode.Selected, QIcon.Mode.Active):
        icon.addPixmap(pixmap, mode)
    return icon


def layer_icon(layer: Layer, width: int, height: int) -> QIcon:
    """A small thumbnail of a layer where it lies on a `width`×`height` canvas, over white (what it adds
    to the picture): a layer smaller than the canvas, at an offset, shows in its corner, not stretched."""
    step = max(1, max(width, height) // THUMB)
    ys = np.arange(0, height, step) - layer.y  # the sampled canvas rows and columns, in layer coordinates
    xs = np.arange(0, width, step) - layer.x
    h, w = layer.pixels.shape[:2]
    inside_y, inside_x = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    small = np.zeros((len(ys), len(xs), 4), np.float32)
    small[np.ix_(inside_y, inside_x)] = layer.pixels[np.ix_(ys[inside_y], xs[inside_x])]
    alpha = small[..., 3:4] / 255.0
    rgb = (small[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return untinted_icon(QPixmap.fromImage(array_to_qimage(rgb)))


class LayersPanel(QWidget):
    """Shows the document's layers and turns clicks into document operations."""

    def __init__(self, document: Document, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.document = document
        self._icons: dict[str, tuple[tuple, QIcon]] = {}  # layer id → (what it was made from, thumbnail)
        self.list = QListWidget()
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity_label = QLabel("100 %")
        buttons = QHBoxLayout()
        self.buttons: dict[str, QToolButton] = {}
        for key, text, tip in (
            ("add", "+", "New layer"),
            ("duplicate", "Copy", "Duplicate layer"),
            ("up", "▲", "Move layer up"),
            ("down", "▼", "Move layer down"),
            ("delete", "Delete", "Delete layer"),
        ):
            button = tool_button(text, tip)
            buttons.addWidget(button)
            self.buttons[key] = button
        buttons.addStretch(1)
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(QLabel("Opacity"))
        opacity_row.addWidget(self.opacity, 1)
        opacity_row.addWidget(self.opacity_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addLayout(opacity_row)
        layout.addLayout(buttons)

        self.buttons["add"].clicked.connect(lambda: document.add_layer())
        self.buttons["duplicate"].clicked.connect(self._duplicate)
        self.buttons["up"].clicked.connect(lambda: self._move(+1))
        self.buttons["down"].clicked.connect(lambda: self._move(-1))
        self.buttons["delete"].clicked.connect(self._delete)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._show_menu)
        self.list.currentItemChanged.connect(self._selected)
        self.list.itemChanged.connect(self._item_edited)
        self.opacity.valueChanged.connect(lambda v: self.opacity_label.setText(f"{v} %"))
        # One undo step per drag: commit the opacity when the slider is let go (or moved by keys).
        self.opacity.sliderReleased.connect(self._commit_opacity)
        self.opacity.actionTriggered.connect(self._opacity_action)
        document.changed.connect(lambda kind: None if kind == "mask" else self.refresh())
        self.refresh()

    def refresh(self, *_: object) -> None:
        """Show the document's layers (top first) and select the active one.

        Items are updated in place when the layers are the same ones in the same order: a rename or a
        visibility tick arrives from inside the item's own signal, which must not delete the item.
        """
        doc = self.document
        layers = list(reversed(doc.layers))
        self._icons = {layer.id: self._icons[layer.id] for layer in layers if layer.id in self._icons}
        with QSignalBlocker(self.list):
            ids = [self.list.item(row).data(Qt.ItemDataRole.UserRole) for row in range(self.list.count())]
            if ids != [layer.id for layer in layers]:
                self.list.clear()
                for layer in layers:
                    item = QListWidgetItem()
                    item.setData(Qt.ItemDataRole.UserRole, layer.id)
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable | Qt.ItemFlag.ItemIsUserCheckable)
                    item.setToolTip("Tick to show, double-click to rename")
                    self.list.addItem(item)
            for row, layer in enumerate(layers):
                item = self.list.item(row)
                item.setIcon(self._icon(layer))
                if item.text() != layer.name:
                    item.setText(layer.name)
                item.setCheckState(Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
                if layer.id == doc.active_id:
                    self.list.setCurrentItem(item)
        self._show_opacity()
        self.buttons["delete"].setEnabled(len(doc.layers) > 1)

    def _icon(self, layer: Layer) -> QIcon:
        """A layer's thumbnail, made again only when its pixels, place or the canvas size changed: a
        stroke redraws one thumbnail, not one per layer."""
        key = (layer.rev, id(layer.pixels), layer.x, layer.y, self.document.width, self.document.height)
        kept = self._icons.get(layer.id)
        if kept is None or kept[0] != key:
            kept = (key, layer_icon(layer, self.document.width, self.document.height))
            self._icons[layer.id] = kept
        return kept[1]

    def _show_opacity(self) -> None:
        layer = self.document.active
        with QSignalBlocker(self.opacity):
            self.opacity.setValue(round((layer.opacity if layer else 1.0) * 100))
        self.opacity_label.setText(f"{self.opacity.value()} %")

    def _selected(self, item: QListWidgetItem | None, _previous: object = None) -> None:
        if item is not None:
            # Choosing the layer to paint on is not a document change: no undo step.
            self.document.set_active(item.data(Qt.ItemDataRole.UserRole))
            self._show_opacity()

    def _item_edited(self, item: QListWidgetItem) -> None:
        layer_id = item.data(Qt.ItemDataRole.UserRole)
        visible = item.checkState() == Qt.CheckState.Checked
        name = item.text().strip() or self.document.layer(layer_id).name
        self.document.set_layer(layer_id, name=name, visible=visible)

    def _commit_opacity(self) -> None:
        if self.document.active_id:
            self.document.set_layer(self.document.active_id, opacity=self.opacity.value() / 100.0)

    def _opacity_action(self, _action: int) -> None:
        if not self.opacity.isSliderDown():  # page/arrow keys and clicks on the groove
            # The action comes before the value moves: commit once it has.
            QTimer.singleShot(0, self._commit_opacity)

    def menu_for(self, item: QListWidgetItem) -> QMenu:
        """The right-click menu of a layer's row (the layer becomes the selected one)."""
        self.list.setCurrentItem(item)
        doc = self.document
        layer_id = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        menu.setToolTipsVisible(True)
        menu.addAction("Rename", lambda: self.list.editItem(item))
        menu.addAction("Duplicate", lambda: doc.duplicate_layer(layer_id))
        delete = menu.addAction("Delete", lambda: doc.delete_layer(layer_id))
        delete.setEnabled(len(doc.layers) > 1)
        if not delete.isEnabled():
            delete.setToolTip("A canvas keeps at least one layer")
        menu.addSeparator()
        merge = menu.addAction("Merge down", lambda: self._merge_down(layer_id))
        why_not = _why_no_merge(doc, layer_id)
        merge.setEnabled(why_not is None)
        merge.setToolTip(why_not or "Blend this layer into the one below (one undo step)")
        return menu

    def _show_menu(self, pos) -> None:  # noqa: ANN001 - a QPoint in the list's viewport
        item = self.list.itemAt(pos)
        if item is not None:
            self.menu_for(item).exec(self.list.viewport().mapToGlobal(pos))

    def _merge_down(self, layer_id: str) -> None:
        if _why_no_merge(self.document, layer_id) is None:
            self.document.merge_down(layer_id)

    def _duplicate(self) -> None:
        if self.document.active_id:
            self.document.duplicate_layer(self.document.active_id)

    def _delete(self) -> None:
        if self.document.active_id and len(self.document.layers) > 1:
            self.document.delete_layer(self.document.active_id)

    def _move(self, delta: int) -> None:
        layer_id = self.document.active_id
        if layer_id:
            self.document.move_layer(layer_id, self.document.index_of(layer_id) + delta)


def _why_no_merge(doc: Document, layer_id: str) -> str | None:
    """Why a layer cannot be merged down, or None when it can."""
    index = doc.index_of(layer_id)
    if index == 0:
        return "The bottom layer has nothing below it"
    if not (doc.layers[index].visible and doc.layers[index - 1].visible):
        return "Show this layer and the one below first"
    return None
