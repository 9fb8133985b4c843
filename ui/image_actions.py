"""The window's Image menu (Canvas size, Expand canvas, Upscale canvas) and Generate → Variations grid."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QDialog, QMainWindow, QMenu

from studio.gallery import Result
from studio.jobs import run_grid
from studio.session import Session
from ui.grid_dialog import GridDialog
from ui.image_dialogs import canvas_size_dialog, expand_dialog, upscale_canvas_dialog


class ImageActions:
    """Builds the actions and menus; each opens its dialog over the window."""

    def __init__(self, window: QMainWindow, session: Session, generate_menu: QMenu, before: QAction) -> None:
        self.window, self.session = window, session
        self.grid_action = self._action(
            "Variations grid…", self.grid, "Ctrl+Shift+G", "Several seeds, variations or an X/Y plot at once"
        )
        self.canvas_size_action = self._action("Canvas size…", self.canvas_size, "Ctrl+Alt+C")
        self.expand_action = self._action(
            "Expand canvas…", self.expand, "Ctrl+Alt+E", "Grow the canvas and paint the new area (outpaint)"
        )
        self.upscale_action = self._action(
            "Upscale canvas…", self.upscale, "Ctrl+Alt+U", "Make the picture 2-4 times larger and refine it"
        )
        generate_menu.addSeparator()
        generate_menu.addAction(self.grid_action)
        self.menu = QMenu("&Image", window)
        for action in (self.canvas_size_action, self.expand_action, self.upscale_action):
            self.menu.addAction(action)
        window.menuBar().insertMenu(before, self.menu)
        self._open_next_grid = False
        session.runs.result_added.connect(self._result_added)

    def _action(self, text: str, slot, shortcut: str, tip: str = "") -> QAction:  # noqa: ANN001
        action = QAction(text, self.window)
        action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.window.addAction(action)
        return action

    def grid(self) -> None:
        """Generate → Variations grid…"""
        dialog = GridDialog(self.session.model.request, self.window)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self._open_next_grid = run_grid(self.session.runs, dialog.grid(), **dialog.changes()) is not None

    def _result_added(self, result: Result) -> None:
        """A grid asked for here opens into its cells when it is done (nothing of it lands on the canvas)."""
        if result.cells and self._open_next_grid:
            self._open_next_grid = False
            self.grid_view = self.window.gallery_panel.open_grid(result)  # type: ignore[attr-defined]

    def canvas_size(self) -> None:
        """Image → Canvas size…"""
        canvas_size_dialog(self.window, self.session)

    def expand(self) -> None:
        """Image → Expand canvas…"""
        expand_dialog(self.window, self.session)

    def upscale(self) -> None:
        """Image → Upscale canvas…"""
        upscale_canvas_dialog(self.window, self.session)
