"""Help → Keyboard shortcuts: a table made from the window's actions when it opens, so it never goes stale."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QMainWindow,
    QMenu,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

NAME_PROPERTY = "shortcut_name"  # an action whose text changes (Undo Paint) names itself with this property


def action_name(action: QAction) -> str:
    """An action's name as a person reads it (no mnemonic ampersands, no trailing ellipsis)."""
    fixed = action.property(NAME_PROPERTY)
    text = fixed if isinstance(fixed, str) and fixed else action.text()
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("…").strip()


def keys_text(action: QAction) -> str:
    """An action's shortcuts as the platform writes them, e.g. "Ctrl+Z" or "Ctrl+Return, Ctrl+Enter"."""
    return ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts())


def shortcut_rows(window: QMainWindow) -> list[tuple[str, str, str]]:
    """(menu, action, keys) for every action of the window that has a shortcut, in menu order.

    Actions in a menu are listed under it (submenus under their own name); those in no menu (tool bar
    actions, canvas keys) under "Other". Each action appears once.
    """
    rows: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def visit(menu: QMenu, title: str) -> None:
        for action in menu.actions():
            if action.menu() is not None:
                visit(action.menu(), action_name(action))
            elif action.shortcuts() and id(action) not in seen:
                seen.add(id(action))
                rows.append((title, action_name(action), keys_text(action)))

    for top in window.menuBar().actions():
        if top.menu() is not None:
            visit(top.menu(), action_name(top))
    for action in window.findChildren(QAction):
        if action.shortcuts() and id(action) not in seen:
            seen.add(id(action))
            rows.append(("Other", action_name(action), keys_text(action)))
    return rows


class ShortcutsDialog(QDialog):
    """A read-only table of the window's keyboard shortcuts."""

    def __init__(self, window: QMainWindow, parent: QWidget | None = None) -> None:
        super().__init__(parent or window)
        self.setWindowTitle("Keyboard shortcuts")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Menu", "Command", "Keys"])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        for row, values in enumerate(shortcut_rows(window)):
            self.table.insertRow(row)
            for column, text in enumerate(values):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnToContents(0)
        self.table.resizeColumnToContents(2)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(520, 560)

    def rows(self) -> list[tuple[str, str, str]]:
        """What the table shows, row by row."""
        rows = []
        for r in range(self.table.rowCount()):
            menu, name, keys = (self.table.item(r, c) for c in range(3))
            rows.append(
                (menu.text() if menu else "", name.text() if name else "", keys.text() if keys else "")
            )
        return rows
