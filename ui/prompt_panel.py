"""The prompt panel: prompt, negative prompt, steps, guidance, seed, size, scheduler, mode, strength, tiling.

It only turns widget edits into `model.set(...)` / `set_mode` calls and shows each field when the request
model says that field changed; Generate and Cancel are the window's actions, placed here as buttons.
"""

from __future__ import annotations

import random

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtGui import QAction, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from backend.request import GUIDANCE_MAX, MAX_SEED, Request
from studio.session import Session

MODES = (
    ("txt2img", "Text to image"),
    ("img2img", "Image to image (the visible canvas)"),
    ("inpaint", "Inpaint the mask"),
)
SIZES = (128, 192, 256, 384, 512, 768, 1024)


def tool_button(text: str, tip: str = "") -> QToolButton:
    """A small text button."""
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip)
    return button


def set_text(widget: QLineEdit | QPlainTextEdit, text: str) -> None:
    """Show `text` unless the widget already holds it (keeps the cursor where the person types)."""
    current = widget.toPlainText() if isinstance(widget, QPlainTextEdit) else widget.text()
    if current != text:
        with QSignalBlocker(widget):
            if isinstance(widget, QPlainTextEdit):
                widget.setPlainText(text)
            else:
                widget.setText(text)


def set_value(widget, value) -> None:  # noqa: ANN001 - any widget with setValue/setChecked
    """Show a value without echoing it back to the model.

    A value the widget already holds is left alone: it is the echo of the person's own typing, and
    setValue would rewrite the text under the cursor ("0" typed becomes "0.00", then "0.45" reads "0.40").
    """
    if isinstance(widget, QCheckBox):
        if widget.isChecked() != bool(value):
            with QSignalBlocker(widget):
                widget.setChecked(bool(value))
    elif widget.value() != value:
        with QSignalBlocker(widget):
            widget.setValue(value)


class SeedEdit(QWidget):
    """A seed field (0 … 2⁶³−1, more than a QSpinBox holds) with a dice button and a lock."""

    seed_edited = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setValidator(QRegularExpressionValidator(r"\d{0,19}"))
        self.dice = tool_button("Random", "A new random seed")
        self.lock = tool_button("Lock")
        self.lock.setCheckable(True)
        self.lock.toggled.connect(lambda on: self.lock.setText("Locked" if on else "Lock"))
        self.lock.setToolTip("Keep this seed; when unlocked, every Generate rolls a new one")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.dice)
        row.addWidget(self.lock)
        self.edit.editingFinished.connect(self._edited)
        self.dice.clicked.connect(self.roll)

    def _edited(self) -> None:
        text = self.edit.text()
        if text:
            self.seed_edited.emit(min(int(text), MAX_SEED))

    def roll(self) -> None:
        """Pick a random seed and announce it."""
        self.seed_edited.emit(random.randrange(2**32))

    def show_seed(self, seed: int) -> None:
        """Show the session's seed."""
        set_text(self.edit, str(seed))


class PromptPanel(QWidget):
    """Prompt and the main generation settings, bound to a Session."""

    size_requested = Signal(int, int)  # the canvas size follows the document: the window decides

    def __init__(
        self,
        session: Session,
        generate: QAction,
        cancel: QAction,
        live: QAction,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Describe the image, e.g. “a gold ring with a blue stone”")
        self.prompt.setFixedHeight(72)
        self.history = QComboBox()
        self.history.setPlaceholderText("Recent prompts…")
        self.history.setToolTip("Put a recent prompt back")
        self.negative = QLineEdit(placeholderText="What to avoid (optional)")
        self.steps = QSpinBox(minimum=1, maximum=150)
        self.guidance = QDoubleSpinBox(minimum=0.0, maximum=GUIDANCE_MAX, singleStep=0.5, decimals=1)
        self.seed = SeedEdit()
        self.size_box = QComboBox()
        for side in SIZES:
            self.size_box.addItem(f"{side} × {side}", f"{side}x{side}")
        self.scheduler = QComboBox()
        self.scheduler.setToolTip("Sampler for diffusers models (the patch engine has its own)")
        self.mode = QComboBox()
        for key, label in MODES:
            self.mode.addItem(label, key)
        self.strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.strength.setToolTip("How much image-to-image and inpaint may change the canvas")
        self.tiling = QCheckBox("Seamless tiling")

        form = QFormLayout()
        form.addRow("Negative", self.negative)
        form.addRow("Mode", self.mode)
        form.addRow("Strength", self.strength)
        form.addRow("Steps", self.steps)
        form.addRow("Guidance", self.guidance)
        form.addRow("Seed", self.seed)
        form.addRow("Size", self.size_box)
        form.addRow("Scheduler", self.scheduler)
        form.addRow("", self.tiling)
        buttons = QHBoxLayout()
        for action in (generate, cancel):
            button = QToolButton()
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            buttons.addWidget(button, 1)
        live_box = QToolButton()
        live_box.setDefaultAction(live)
        buttons.addWidget(live_box)
        layout = QVBoxLayout(self)
        layout.addWidget(self.prompt)
        layout.addWidget(self.history)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addStretch(1)

        model, runs = session.model, session.runs
        self.prompt.textChanged.connect(lambda: model.set(prompt=self.prompt.toPlainText()))
        self.negative.textEdited.connect(lambda text: model.set(negative_prompt=text))
        self.history.activated.connect(self._history_chosen)
        self.steps.valueChanged.connect(lambda v: model.set(steps=v))
        self.guidance.valueChanged.connect(lambda v: model.set(guidance=v))
        self.seed.seed_edited.connect(lambda v: model.set(seed=v))
        self.seed.lock.toggled.connect(runs.set_seed_locked)
        self.size_box.activated.connect(self._size_chosen)
        self.scheduler.activated.connect(lambda _i: model.set(scheduler=self.scheduler.currentText()))
        self.mode.activated.connect(lambda _i: model.set_mode(self.mode.currentData()))
        self.strength.valueChanged.connect(lambda v: model.set(strength=v))
        self.tiling.toggled.connect(lambda v: model.set(tiling=v))
        # Each widget shows its own field, and redraws only when that field changes.
        model.field("prompt").connect(lambda text: set_text(self.prompt, text))
        model.field("negative_prompt").connect(lambda text: set_text(self.negative, text))
        model.field("steps").connect(lambda v: set_value(self.steps, v))
        model.field("guidance").connect(lambda v: set_value(self.guidance, v))
        model.field("seed").connect(self.seed.show_seed)
        model.field("strength").connect(lambda v: set_value(self.strength, v))
        model.field("tiling").connect(lambda v: set_value(self.tiling, v))
        model.group("engine", "scheduler").connect(self._show_scheduler)
        model.field("mode").connect(self.show_mode)
        model.history_changed.connect(self.show_history)
        runs.seed_lock_changed.connect(self.seed.lock.setChecked)  # its toggled echo changes nothing
        session.document.changed.connect(self._show_size)
        self.show_request(model.request)
        self.show_mode(model.mode)
        self.seed.lock.setChecked(runs.seed_locked)
        self.show_history()
        self._show_size()

    def show_request(self, request: Request) -> None:
        """Put a whole request into the widgets (when the panel is built)."""
        set_text(self.prompt, request.prompt)
        set_text(self.negative, request.negative_prompt)
        set_value(self.steps, request.steps)
        set_value(self.guidance, request.guidance)
        self.seed.show_seed(request.seed)
        set_value(self.strength, request.strength)
        set_value(self.tiling, request.tiling)
        self._show_scheduler(request)

    def _show_scheduler(self, request: Request) -> None:
        with QSignalBlocker(self.scheduler):
            if request.engine == "diffusers" and self.scheduler.count() <= 1:
                from backend.schedulers import scheduler_names  # imports diffusers: only when needed

                self.scheduler.clear()
                self.scheduler.addItems(list(scheduler_names()))
            if self.scheduler.findText(request.scheduler) < 0:
                self.scheduler.addItem(request.scheduler)
            self.scheduler.setCurrentText(request.scheduler)
        self.scheduler.setEnabled(request.engine == "diffusers")

    def show_mode(self, mode: str) -> None:
        """Show the mode; strength only matters when starting from the canvas."""
        with QSignalBlocker(self.mode):
            self.mode.setCurrentIndex(max(0, self.mode.findData(mode)))
        self.strength.setEnabled(mode != "txt2img")

    def show_history(self) -> None:
        """List recent prompts, newest first."""
        with QSignalBlocker(self.history):
            self.history.clear()
            for text in self.session.model.prompt_history:
                self.history.addItem(text if len(text) < 60 else text[:57] + "…", text)
            self.history.setCurrentIndex(-1)

    def _history_chosen(self, index: int) -> None:
        text = self.history.itemData(index)
        if text:
            self.session.model.set(prompt=text)
        with QSignalBlocker(self.history):
            self.history.setCurrentIndex(-1)

    def _size_chosen(self, _index: int) -> None:
        data = self.size_box.currentData()
        if data:
            width, height = (int(v) for v in str(data).split("x"))
            self.size_requested.emit(width, height)

    def _show_size(self, *_: object) -> None:
        doc = self.session.document
        key = f"{doc.width}x{doc.height}"  # a str: QVariant round-trips it exactly
        with QSignalBlocker(self.size_box):
            index = self.size_box.findData(key)
            if index < 0:
                self.size_box.addItem(f"{doc.width} × {doc.height}", key)
                index = self.size_box.count() - 1
            self.size_box.setCurrentIndex(index)
