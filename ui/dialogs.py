"""Small dialogs: the size of a new canvas, and an error that says what to do next."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QMessageBox,
    QSpinBox,
    QWidget,
)

# (words in the message, what the person can do). First match wins.
ADVICE = (
    (
        ("out of memory", "oom"),
        "Try a smaller size or fewer steps, close other programs, or use the patch engine.",
    ),
    (
        ("cannot be read safely",),
        "The file holds more than weights (it may try to run code), so it was not loaded: use a "
        ".safetensors version from a source you trust.",
    ),
    (
        ("safetensors", "pickle", ".ckpt"),
        "Choose a .safetensors file or a diffusers folder in the model picker, or allow pickle files "
        "(Models → Allow pickle model files).",
    ),
    (
        ("model", "weights", "config"),
        "Choose another model in the model picker, or go back to the patch engine.",
    ),
    (("reference",), "Choose a folder with a few PNG or JPEG images as references, or use the default ones."),
    (("image", "decode", "too large"), "Choose a PNG, JPEG or WebP picture that opens in other programs."),
    (
        ("prompt", "seed", "steps", "guidance", "strength", "size", "width", "height", "mask", "blend"),
        "Change that setting in the prompt or slider panel and press Generate again.",
    ),
)
DEFAULT_ADVICE = "Check the settings and press Generate again; nothing on the canvas was lost."


def advice_for(message: str) -> str:
    """What a person can do about an error message."""
    low = message.lower()
    for words, advice in ADVICE:
        if any(word in low for word in words):
            return advice
    return DEFAULT_ADVICE


def show_error(parent: QWidget, title: str, message: str) -> QMessageBox:
    """A non-blocking error box with the message and what to do (the window stays usable)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(advice_for(message))
    box.setObjectName("error-dialog")
    box.open()  # window-modal but not a nested event loop: runs keep streaming
    return box


class NewCanvasDialog(QDialog):
    """Asks for a canvas width and height (multiples of 8)."""

    def __init__(self, width: int, height: int, parent: QWidget | None = None, limit: int = 2048) -> None:
        super().__init__(parent)
        self.setWindowTitle("New canvas")
        self.width_box = QSpinBox(minimum=32, maximum=limit, singleStep=8, value=width, suffix=" px")
        self.height_box = QSpinBox(minimum=32, maximum=limit, singleStep=8, value=height, suffix=" px")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        form = QFormLayout(self)
        form.addRow("Width", self.width_box)
        form.addRow("Height", self.height_box)
        form.addRow(buttons)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)

    def chosen_size(self) -> tuple[int, int]:
        """The chosen size, rounded down to multiples of 8 (what the engines accept)."""
        return self.width_box.value() // 8 * 8, self.height_box.value() // 8 * 8


def ask_canvas_size(parent: QWidget, width: int, height: int) -> tuple[int, int] | None:
    """Ask for a new canvas size; None when cancelled."""
    dialog = NewCanvasDialog(width, height, parent)
    return dialog.chosen_size() if dialog.exec() == QDialog.DialogCode.Accepted else None


def confirm(parent: QWidget, title: str, question: str) -> bool:
    """A yes/no question; True for yes."""
    answer = QMessageBox.question(parent, title, question)
    return answer == QMessageBox.StandardButton.Yes
