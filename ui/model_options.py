"""The window's Models menu: folders to look for models in, and whether pickle model files may be loaded.

Both are kept in the settings and reach the running engines at once (ui/model_folders.py), and the engine
picker, the ControlNet list and the LoRA list look again, so a change shows from the next run on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QMessageBox

from studio.session import Session
from ui.model_folders import choose_folder, pickles_allowed, set_pickles_allowed

if TYPE_CHECKING:
    from ui.main_window import MainWindow

ALLOW_PICKLE_TEXT = "Allow pickle model files (.ckpt, .pt, .bin)…"
PICKLE_RISK = (
    "Pickle files (.ckpt, .pt, .pth, .bin) are an older way to store models, and a pickle can carry code "
    "that runs when the file is opened. Studio reads them with torch's weights-only loader, which refuses "
    "a file that tries to run code, but a .safetensors file holds only numbers and is safer: use one when "
    "the model comes in both."
)
PICKLE_CHANGE = (
    "Allowing them lists .ckpt models, ControlNets and LoRAs in the pickers (marked \u201cpickle\u201d) and "
    "lets the next run load them. You can turn this off again in the Models menu."
)


class ModelOptions:
    """Builds the Models menu of the window and carries out its choices."""

    def __init__(self, window: MainWindow, session: Session, before: QAction) -> None:
        self.window, self.session = window, session
        self.add_folder_action = QAction("Add a folder to look in…", window)
        tip = "An A1111 or ComfyUI install, or a folder of LoRA files; kept in the settings"
        self.add_folder_action.setToolTip(tip)
        self.add_folder_action.setStatusTip(tip)
        self.add_folder_action.triggered.connect(self.add_folder)
        self.allow_pickle_action = QAction(ALLOW_PICKLE_TEXT, window, checkable=True)
        self.allow_pickle_action.setChecked(pickles_allowed(session))
        tip = "Load pickle checkpoints too (they are read without running code; .safetensors is safer)"
        self.allow_pickle_action.setToolTip(tip)
        self.allow_pickle_action.setStatusTip(tip)
        # `triggered`, not `toggled`: only the person's click asks; a refusal unticks it without asking again.
        self.allow_pickle_action.triggered.connect(self.set_allow_pickle)
        self.menu = QMenu("&Models", window)
        self.menu.addAction(self.add_folder_action)
        self.menu.addSeparator()
        self.menu.addAction(self.allow_pickle_action)
        window.menuBar().insertMenu(before, self.menu)

    def add_folder(self) -> None:
        """Models → Add a folder to look in…: ask for it, keep it, and list what it holds."""
        folder = choose_folder(self.window, self.session)
        if folder is not None:
            self.rediscover()
            self.window.status.show_message(f"Looking for models in {folder} too")

    def set_allow_pickle(self, allow: bool) -> None:
        """Allow pickle model files (after the person confirms) or stop allowing them (at once)."""
        if allow and not self._confirm():
            self.allow_pickle_action.setChecked(False)
            return
        set_pickles_allowed(self.session, allow)
        self.rediscover()
        self.window.status.show_message(
            "Pickle model files are allowed from the next run on"
            if allow
            else "Pickle model files are refused again from the next run on"
        )

    def _confirm(self) -> bool:
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Allow pickle model files?",
            "Allow pickle model files (.ckpt, .pt, .pth, .bin)?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self.window,
        )
        box.setInformativeText(f"{PICKLE_RISK}\n\n{PICKLE_CHANGE}")
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Yes).setText("Allow pickle files")
        box.setObjectName("allow-pickle-dialog")
        return box.exec() == QMessageBox.StandardButton.Yes

    def rediscover(self) -> None:
        """The engine picker, ControlNet list and LoRA list look again with the settings as they are now."""
        window = self.window
        window.engine_picker.rediscover(window.discover_models)
        window.slider_panel.control_box.look_again(self._model_folders())
        lora_box = window.slider_panel.lora_box
        lora_box.folders = (self._model_folders(), self._lora_folders())
        lora_box.look_again()

    def _model_folders(self) -> tuple[str, ...]:
        settings = self.session.settings
        return tuple(settings.model_folders) if settings is not None else ()

    def _lora_folders(self) -> tuple[str, ...]:
        settings = self.session.settings
        return tuple(settings.lora_folders) if settings is not None else ()
