"""Image → Canvas size… / Expand canvas… / Upscale canvas…, and Upscale… for a gallery result.

Each dialog asks, then hands over to studio/jobs.py (or studio/canvas_ops.py for a plain canvas size), so
the run shows its previews and progress like any other and Esc cancels it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from backend.outpaint import Expansion, fitted
from backend.upscale_spec import DEFAULT_REFINE, FACTORS, MAX_SIDE, Upscale
from studio.canvas_ops import resize_canvas
from studio.gallery import Result
from studio.jobs import expand_canvas, upscale_canvas, upscale_result, upscale_settings
from studio.session import Session

LANCZOS = "Lanczos (no model)"
BROWSE = "Choose a file…"


class ExpandDialog(QDialog):
    """How many pixels to add on each side, and whether to paint the new area."""

    def __init__(self, width: int, height: int, fill: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Expand canvas" if fill else "Canvas size")
        self.setObjectName("expand-dialog")
        self.size = (width, height)
        self.sides = {
            side: QSpinBox(minimum=0, maximum=MAX_SIDE, singleStep=8, suffix=" px")
            for side in ("left", "top", "right", "bottom")
        }
        self.sides["right"].setValue(128 if fill else 0)
        self.fill = QCheckBox("Paint the new area from the prompt and the picture around it")
        self.fill.setChecked(fill)
        self.result_size = QLabel()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        form = QFormLayout(self)
        for side, box in self.sides.items():
            form.addRow(side.capitalize(), box)
            box.valueChanged.connect(self._show_size)
        form.addRow(self.fill)
        form.addRow("New size", self.result_size)
        form.addRow(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._show_size()

    def expansion(self) -> Expansion:
        """The sides as typed."""
        return Expansion(**{side: box.value() for side, box in self.sides.items()})

    def _show_size(self) -> None:
        e = self.expansion()
        ok = not e.empty
        if ok:
            width, height = fitted(e, *self.size).size(*self.size)
            self.result_size.setText(f"{width} × {height} px (sides grow in steps of 8)")
        else:
            self.result_size.setText("Give at least one side some pixels")
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)


class UpscaleDialog(QDialog):
    """The factor, the upscale model (or Lanczos) and the refine's strength and tile size."""

    def __init__(self, width: int, height: int, models: list[Path], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Upscale")
        self.setObjectName("upscale-dialog")
        self.size = (width, height)
        self.factor = QComboBox()
        for f in FACTORS:
            self.factor.addItem(f"× {f}", f)
        self.model = QComboBox()
        self.model.addItem(LANCZOS, "")
        for path in models:
            self.model.addItem(path.stem, str(path))
        self.model.addItem(BROWSE, None)
        self.strength = QDoubleSpinBox(
            minimum=0.0, maximum=1.0, singleStep=0.05, value=DEFAULT_REFINE, decimals=2
        )
        self.strength.setToolTip("How much the refine may change: 0 upscales only, 0.2-0.4 adds detail")
        self.tile = QSpinBox(minimum=0, maximum=2048, singleStep=64, value=0)
        self.tile.setSpecialValueText("the model's own")
        self.result_size = QLabel()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Upscale")
        form = QFormLayout(self)
        form.addRow("Factor", self.factor)
        form.addRow("Upscale model", self.model)
        form.addRow("Refine strength", self.strength)
        form.addRow("Refine tile", self.tile)
        form.addRow("New size", self.result_size)
        form.addRow(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.factor.currentIndexChanged.connect(self._show_size)
        self.model.activated.connect(self._browse)
        self._show_size()

    def settings(self) -> tuple[Upscale, float]:
        """(the Upscale settings, the refine strength)."""
        tile = self.tile.value() // 8 * 8
        settings = upscale_settings(int(self.factor.currentData()), self.model.currentData() or "", tile)
        if tile and 2 * settings.overlap >= tile:
            settings = upscale_settings(settings.factor, settings.model, tile, max(0, tile // 2 - 8))
        return settings, self.strength.value()

    def _show_size(self) -> None:
        f = int(self.factor.currentData())
        width, height = self.size[0] * f, self.size[1] * f
        ok = max(width, height) <= MAX_SIDE
        self.result_size.setText(f"{width} × {height} px" + ("" if ok else f": more than {MAX_SIDE} a side"))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def _browse(self, index: int) -> None:
        if self.model.itemData(index) is not None:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Upscale model", "", "Upscale models (*.safetensors *.pth *.pt)"
        )
        if path:
            self.model.insertItem(index, Path(path).stem, path)
            self.model.setCurrentIndex(index)
        else:
            self.model.setCurrentIndex(0)


def upscale_models(session: Session) -> list[Path]:
    """Upscale model files in the A1111/ComfyUI folders the person added in the settings."""
    from backend.sr_models import discover_upscalers

    folders = tuple(session.settings.model_folders) if session.settings is not None else ()
    return discover_upscalers(folders)


def canvas_size_dialog(parent: QWidget, session: Session) -> None:
    """Image → Canvas size…: grow the canvas on any side, the new area left as paper."""
    doc = session.document
    dialog = ExpandDialog(doc.width, doc.height, fill=False, parent=parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return
    if dialog.fill.isChecked():
        expand_canvas(session.runs, dialog.expansion())
        return
    e = dialog.expansion()
    width, height = e.size(doc.width, doc.height)
    resize_canvas(doc, width, height, e.left, e.top)


def expand_dialog(parent: QWidget, session: Session) -> None:
    """Image → Expand canvas…: grow the canvas and paint the new area (outpainting)."""
    doc = session.document
    dialog = ExpandDialog(doc.width, doc.height, fill=True, parent=parent)
    if dialog.exec() == QDialog.DialogCode.Accepted:
        expand_canvas(session.runs, dialog.expansion(), fill=dialog.fill.isChecked())


def upscale_canvas_dialog(parent: QWidget, session: Session) -> None:
    """Image → Upscale canvas…: the whole picture larger, refined with the panels' prompt and model."""
    doc = session.document
    dialog = UpscaleDialog(doc.width, doc.height, upscale_models(session), parent)
    if dialog.exec() == QDialog.DialogCode.Accepted:
        settings, strength = dialog.settings()
        upscale_canvas(session.runs, settings, strength)


def upscale_result_dialog(parent: QWidget, session: Session, result: Result) -> None:
    """Upscale… on a gallery result: a larger copy in the gallery, refined with the result's own recipe."""
    h, w = result.image.shape[:2]
    dialog = UpscaleDialog(w, h, upscale_models(session), parent)
    if dialog.exec() == QDialog.DialogCode.Accepted:
        settings, strength = dialog.settings()
        upscale_result(session.runs, result, settings, strength)
