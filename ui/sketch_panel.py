"""The patch engine's sketch controls: which references the prompt picks (and their shares) before a run,
the Structure sliders, and the sketch's main colours, each with the material it will be painted in.

Every edit is one `model.set`; each control redraws only when its own field changes. The colours are
read from the canvas (a small copy of what it shows) a moment after the person stops painting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QSignalBlocker, Qt, QTimer, Slot
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from backend.references import DEFAULT_FOLDER, ReferenceSet, load_references, match_prompt, selection_summary
from backend.request import Request
from backend.sketch_plan import (
    PIN_REACH,
    SKETCH,
    SketchColour,
    main_colours,
    oklab,
    palettes,
    parse_colour,
    plan_materials,
    structure_size,
)
from studio.session import Session
from ui.slider_panel import ValueSlider
from ui.workers import Call

SNAPSHOT_SIDE = 128  # the canvas is read at this size for its colours: enough for a sketch's regions
SETTLE_MS = 400  # colours are read this long after the last change, not on every dab
AUTO, KEEP = "Auto", "Keep as drawn"


class SketchPanel(QWidget):
    """Patch engine, image-to-image and inpainting: follow the sketch, paint each colour in a material."""

    def __init__(
        self, session: Session, snapshot: Callable[[], QImage], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.session, self.model, self._snapshot = session, session.model, snapshot
        defaults = Request()
        self.references = QLabel(wordWrap=True)
        self.references.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.unmatched = QLabel(wordWrap=True)
        self.unmatched.setStyleSheet("color: #b35c00;")
        self.structure = ValueSlider(0.0, 1.0, defaults.structure)
        self.structure_size = QLabel()
        self.structure_steps = ValueSlider(0.0, 1.0, defaults.structure_steps)
        self.structure_steps.setToolTip(
            "The share of the steps (the first ones) that keep the sketch's layout"
        )
        self.hint = QLabel(
            "Draw a sketch, then choose Image-to-image or Inpaint: these follow it.", wordWrap=True
        )
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Colour", "Area", "Painted in"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for column in (0, 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QTableWidget.SelectionMode.NoSelection)
        self.table.setToolTip(
            "Each main colour of the sketch and the reference it is painted in; pin one here"
        )

        form = QFormLayout()
        form.addRow("References", self.references)
        form.addRow("", self.unmatched)
        form.addRow("Structure", self.structure)
        form.addRow("", self.structure_size)
        form.addRow("Structure steps", self.structure_steps)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.hint)
        layout.addWidget(self.table)
        layout.addStretch(1)

        self.colours: list[SketchColour] = []
        self._refs: ReferenceSet | None = None
        self._refs_for: str | None = None
        self._loading: Call | None = None
        self._settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(self.read_colours)
        model = self.model
        self.structure.moved.connect(lambda v: model.set(structure=v))
        self.structure_steps.moved.connect(lambda v: model.set(structure_steps=v))
        model.field("structure").connect(self._show_structure)
        model.field("structure_steps").connect(self.structure_steps.show_value)
        model.field("colour_pins").connect(self._show_pins)
        model.group("prompt", "negative_prompt").connect(self._show_references)
        model.group("engine", "model").connect(self._engine_changed)
        model.group("width", "height").connect(lambda _r: self._show_structure(model.request.structure))
        model.field("mode").connect(self._mode_changed)
        session.document.changed.connect(self._document_changed)
        self._show_structure(model.request.structure)
        self.structure_steps.show_value(model.request.structure_steps)
        self._engine_changed(model.request)
        self._mode_changed(model.mode)

    # -- references chosen by the prompt ---------------------------------------------------------------
    def _engine_changed(self, request: Request) -> None:
        self.setVisible(request.engine == "patch")
        if request.engine == "patch" and request.model != self._refs_for:
            self._refs_for, self._refs = request.model, None
            self.references.setText("Reading the reference images…")
            self._loading = Call("sketch-references", _load, request.model)
            self._loading.finished.connect(self._loaded)
            self._loading.start()

    @Slot(object, object)
    def _loaded(self, loaded: tuple[str, ReferenceSet | None, str] | None, error: object) -> None:
        if loaded is None or loaded[0] != self._refs_for:
            return  # a folder chosen since then is being read
        self._loading = None
        folder, refs, problem = loaded
        self._refs = refs
        if refs is None:
            self.references.setText(f"References: {problem}")
            return
        self._show_references(self.model.request)
        self._fill_table()

    def _show_references(self, request: Request) -> None:
        if self._refs is None:
            return
        try:
            chosen, note = selection_summary(self._refs, self._selection(request))
        except Exception as exc:  # noqa: BLE001 - a negative prompt that removes everything, say
            chosen, note = "", str(exc)
        self.references.setText(chosen)
        self.unmatched.setText(note or "")
        self.unmatched.setVisible(bool(note))
        self._fill_table()

    def _selection(self, request: Request):  # noqa: ANN202 - a references.Selection
        assert self._refs is not None
        return match_prompt(self._refs, request.prompt, request.negative_prompt)

    # -- structure ---------------------------------------------------------------------------------------
    def _show_structure(self, value: float) -> None:
        self.structure.show_value(value)
        r = self.model.request
        size = structure_size(value, min(r.width, r.height))
        self.structure_size.setText(
            f"Keeps the sketch's shapes and colours larger than {size:.0f} px: "
            "0 exact colours, 1 only the broad layout"
        )
        self.structure_size.setWordWrap(True)

    def _mode_changed(self, mode: str) -> None:
        sketching = mode in ("img2img", "inpaint")
        for widget in (self.structure, self.structure_steps, self.table):
            widget.setEnabled(sketching)
        self.hint.setVisible(not sketching)
        if sketching:
            self.read_colours()

    # -- the sketch's colours ------------------------------------------------------------------------------
    def _document_changed(self, _kind: str) -> None:
        if self.isVisible() and self.model.mode in ("img2img", "inpaint"):
            self._settle.start()

    def read_colours(self) -> None:
        """Read the sketch's main colours from the canvas (inside the mask when inpainting)."""
        image = self._snapshot()
        if image.isNull():
            return
        small = image.scaled(
            SNAPSHOT_SIDE,
            SNAPSHOT_SIDE,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.FastTransformation,
        ).convertToFormat(QImage.Format.Format_RGB888)
        h, w, stride = small.height(), small.width(), small.bytesPerLine()
        pixels = np.frombuffer(small.constBits(), np.uint8, h * stride).reshape(h, stride)[:, : w * 3]
        pixels = pixels.reshape(h, w, 3).copy()
        region = None
        doc = self.session.document
        if self.model.mode == "inpaint" and doc.mask.any():
            ys = np.arange(h) * doc.height // h
            xs = np.arange(w) * doc.width // w
            region = doc.mask[ys][:, xs] > 127
        colours = main_colours(pixels, region)
        if colours != self.colours:
            self.colours = colours
            self._fill_table()

    def _fill_table(self) -> None:
        auto = self._auto_materials()
        names = self._refs.names if self._refs is not None else []
        self.table.setRowCount(len(self.colours))
        for row, colour in enumerate(self.colours):
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(90, 90, 90))  # a frame, so white paper shows as a swatch too
            painter = QPainter(swatch)
            painter.fillRect(1, 1, 12, 12, QColor(*colour.rgb))
            painter.end()
            item = QTableWidgetItem(QIcon(swatch), colour.hex)
            item.setToolTip("The paper: kept as drawn unless pinned" if colour.background else colour.hex)
            self.table.setItem(row, 0, item)
            self.table.setItem(row, 1, QTableWidgetItem(f"{colour.fraction:.0%}"))
            picker = QComboBox()
            picker.addItem(f"{AUTO}: {auto[row]}", None)
            picker.setMinimumContentsLength(10)
            picker.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            picker.addItem(KEEP, SKETCH)
            for name in names:
                picker.addItem(name, name)
            picker.setToolTip(f"What {colour.hex} is painted in; Auto follows the prompt and the colour")
            picker.currentIndexChanged.connect(self._picker_changed(row))
            self.table.setCellWidget(row, 2, picker)
        self._show_pins(self.model.request.colour_pins)
        # As tall as its rows: the panel below a short table is not an empty box.
        rows = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setMaximumHeight(self.table.horizontalHeader().height() + rows + 4)

    def _auto_materials(self) -> list[str]:
        """What each colour is painted in without a pin (as the engine will choose)."""
        if self._refs is None or not self.colours:
            return ["…"] * len(self.colours)
        try:
            sel = self._selection(self.model.request)
        except Exception:  # noqa: BLE001 - said in the references line
            return ["?"] * len(self.colours)
        names = [self._refs.names[i] for i in sel.indices]
        plan = plan_materials(
            self.colours, names, list(sel.shares), [palettes(self._refs)[i] for i in sel.indices], None
        )
        out = []
        for row in range(len(self.colours)):
            best = int(np.argmax(plan.priors[row]))
            out.append("paper, kept" if plan.names[best] == SKETCH else plan.names[best])
        return out

    def _picker_changed(self, row: int) -> Callable[[int], None]:
        def changed(_index: int) -> None:
            picker = self.table.cellWidget(row, 2)
            assert isinstance(picker, QComboBox)
            colour = self.colours[row].hex
            kept = tuple(p for p in self.model.request.colour_pins if not self._same(p[0], colour))
            target = picker.currentData()
            self.model.set(colour_pins=kept + (((colour, target),) if target else ()))

        return changed

    def _show_pins(self, pins: tuple[tuple[str, str], ...]) -> None:
        for row, colour in enumerate(self.colours):
            picker = self.table.cellWidget(row, 2)
            if not isinstance(picker, QComboBox):
                continue
            target = next((t for c, t in pins if self._same(c, colour.hex)), None)
            index = max(0, picker.findData(target)) if target else 0
            with QSignalBlocker(picker):
                picker.setCurrentIndex(index)

    @staticmethod
    def _same(a: str, b: str) -> bool:
        try:
            la, lb = oklab(np.array(parse_colour(a)) / 255.0), oklab(np.array(parse_colour(b)) / 255.0)
        except ValueError:
            return False
        return float(np.linalg.norm(la - lb)) <= PIN_REACH


def _load(folder: str) -> tuple[str, ReferenceSet | None, str]:
    """The folder, its reference set with palettes computed, or what went wrong (on a worker thread)."""
    try:
        refs = load_references(folder or DEFAULT_FOLDER)
        palettes(refs)
        return folder, refs, ""
    except Exception as exc:  # noqa: BLE001 - shown in the panel; the engine reports it on Generate
        return folder, None, str(exc)
