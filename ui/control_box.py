"""Control layers in the Sliders panel: any layer can steer the picture through a ControlNet.

Each row: the layer, what it shows (scribble, line art, canny edges from an image, or a depth or pose map
passed as it is), the ControlNet, its strength and the fraction of the steps it acts in. The rows live in
`session.controls` (studio/control_layers.py), which keeps the request's controls in step with the layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSignalBlocker, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from backend.request import CONTROL_KINDS, MAX_CONTROLS, Request
from studio.control_layers import ControlLayers, ControlRow
from studio.session import Session
from ui.model_folders import choose_folder, file_filter, pickles_allowed
from ui.prompt_panel import tool_button
from ui.workers import ModelLookup, labelled_models

if TYPE_CHECKING:
    from ui.slider_panel import ValueSlider

KIND_LABELS = {
    "scribble": "Scribble (from strokes)",
    "lineart": "Line art (from lines)",
    "canny": "Canny edges (from an image)",
    "depth": "Depth map (as is)",
    "pose": "Pose map (as is)",
    "raw": "Control image (as is)",
}
CHOOSE_FILE, CHOOSE_FOLDER, LOOK_IN = "\x00file", "\x00folder", "\x00look"  # the combo's "…" items


def _find_controlnets(folders: tuple[str, ...], allow_pickle: bool) -> list[tuple[str, str]]:
    """(name, path) of the ControlNets found (pickles only when allowed, marked); runs on a worker thread."""
    from backend.controlnets import discover_controlnets

    return labelled_models(discover_controlnets, allow_pickle, folders)


class ControlRowWidget(QFrame):
    """One control: layer, kind, ControlNet, strength, start and end, and a remove button."""

    def __init__(self, box: ControlBox, index: int, row: ControlRow) -> None:
        super().__init__()
        self.box, self.index = box, index
        self.setFrameShape(QFrame.Shape.StyledPanel)
        slider = box.slider_class
        self.layer = QComboBox()
        self.kind = QComboBox()
        for kind in CONTROL_KINDS:
            self.kind.addItem(KIND_LABELS.get(kind, kind), kind)
        self.net = QComboBox()
        for combo in (self.layer, self.kind, self.net):  # long file names must not widen the panel
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.strength: ValueSlider = slider(0.0, 2.0, 1.0)
        self.start: ValueSlider = slider(0.0, 1.0, 0.0)
        self.end: ValueSlider = slider(0.0, 1.0, 1.0)
        self.start.setToolTip("The fraction of the steps after which the control starts to act")
        self.end.setToolTip("The fraction of the steps after which it stops (early stops free the details)")
        self.problem = QLabel()
        self.problem.setWordWrap(True)
        remove = tool_button("✕", "Remove this control")
        top = QHBoxLayout()
        top.addWidget(self.layer, 1)
        top.addWidget(remove)
        form = QFormLayout()
        form.addRow("Layer", top)
        form.addRow("Shows", self.kind)
        form.addRow("ControlNet", self.net)
        form.addRow("Strength", self.strength)
        form.addRow("Start", self.start)
        form.addRow("End", self.end)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        self.show_row(row)
        self.layer.activated.connect(lambda _i: box.controls.update(index, layer=self.layer.currentData()))
        self.kind.activated.connect(lambda _i: box.controls.update(index, kind=self.kind.currentData()))
        self.net.activated.connect(self._net_chosen)
        self.strength.moved.connect(lambda v: box.controls.update(index, strength=v))
        self.start.moved.connect(lambda v: box.controls.update(index, start=v))
        self.end.moved.connect(lambda v: box.controls.update(index, end=v))
        remove.clicked.connect(lambda: box.controls.remove(index))

    def show_row(self, row: ControlRow) -> None:
        """Show a row's settings (without echoing them back)."""
        doc = self.box.controls.document
        with QSignalBlocker(self.layer):
            self.layer.clear()
            if row.layer is None:
                self.layer.addItem("(the recipe's image)", None)
            for la in reversed(doc.layers):  # top layer first, as the layers panel lists them
                self.layer.addItem(la.name, la.id)
            self.layer.setCurrentIndex(max(0, self.layer.findData(row.layer)))
        with QSignalBlocker(self.kind):
            self.kind.setCurrentIndex(max(0, self.kind.findData(row.kind)))
        with QSignalBlocker(self.net):
            self.net.clear()
            self.net.addItem("(choose a ControlNet)", "")
            known = self.box.found or []
            if row.model and all(path != row.model for _, path in known):
                self.net.addItem(row.model.rstrip("/").rsplit("/", 1)[-1], row.model)
            for name, path in known:
                self.net.addItem(name, path)
            if self.box.found is None:
                self.net.addItem("Looking for ControlNets…", "")
            self.net.addItem("Choose a file…", CHOOSE_FILE)
            self.net.addItem("Choose a folder…", CHOOSE_FOLDER)
            self.net.addItem("Add a folder to look in…", LOOK_IN)
            self.net.setCurrentIndex(max(0, self.net.findData(row.model)))
        self.strength.show_value(row.strength)
        self.start.show_value(row.start)
        self.end.show_value(row.end)
        problem = self.box.controls.problem(self.index)
        self.problem.setText(problem)
        self.problem.setVisible(bool(problem))

    def _net_chosen(self, _index: int) -> None:
        data = self.net.currentData()
        if data == CHOOSE_FILE:  # a cancelled dialog gives "": nothing changes
            data = QFileDialog.getOpenFileName(
                self, "Choose a ControlNet", "", file_filter("ControlNet", self.box.session)
            )[0]
            data = data or None
        elif data == CHOOSE_FOLDER:
            data = QFileDialog.getExistingDirectory(self, "Choose a ControlNet folder (diffusers)") or None
        elif data == LOOK_IN:
            folder = choose_folder(self, self.box.session)
            if folder is not None:
                self.box.look_again((*self.box.folders, folder))
            data = None
        if data is not None:  # a ControlNet, or "" for "(choose a ControlNet)"
            self.box.controls.update(self.index, model=data)
        self.box.refresh()


class ControlBox(QGroupBox):
    """The control layers (shown for the diffusers engine)."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__("Control layers", parent)
        from ui.slider_panel import ValueSlider  # imported here: slider_panel imports this module

        self.slider_class = ValueSlider
        self.session = session
        self.controls: ControlLayers = session.controls
        settings = session.settings
        self.folders = tuple(settings.model_folders) if settings else ()
        self.lookup = ModelLookup("controlnets", _find_controlnets, self)
        self.lookup.ready.connect(self.refresh)
        self.rows: list[ControlRowWidget] = []
        self.rows_layout = QVBoxLayout()
        self.empty = QLabel("No control layer: a sketch or line layer can hold the composition.")
        self.empty.setWordWrap(True)
        self.add_button = QPushButton("Use the selected layer as a control")
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addLayout(self.rows_layout)
        layout.addWidget(self.add_button)
        self.add_button.clicked.connect(self._add)
        self.controls.rows_changed.connect(self.refresh)
        self.controls.document.changed.connect(self._document_changed)
        session.model.group("engine", "model").connect(self._show_engine)
        session.model.field("controls").connect(self._controls_changed)
        self.refresh()
        self._show_engine(session.model.request)

    @Slot(object)
    def _show_engine(self, request: Request) -> None:
        diffusers = request.engine == "diffusers"
        self.setVisible(diffusers)
        if diffusers:
            self.lookup.look(self.folders, pickles_allowed(self.session))

    @property
    def found(self) -> list[tuple[str, str]] | None:
        """The ControlNets found, (name, path); None until the look has ended."""
        return self.lookup.found

    def look_again(self, folders: tuple[str, ...] | None = None) -> None:
        """Discover ControlNets again in these folders (default: the same) and the HF cache."""
        self.folders = folders if folders is not None else self.folders
        self.lookup.again(self.folders, pickles_allowed(self.session))
        self.refresh()

    @Slot(str)
    def _document_changed(self, kind: str) -> None:
        if kind in ("layers", "reset"):  # layer names and ids in the combos
            self.refresh()

    @Slot(object)
    def _controls_changed(self, _controls: object) -> None:
        for widget in self.rows:  # a row that became complete (or not) says so
            problem = self.controls.problem(widget.index)
            widget.problem.setText(problem)
            widget.problem.setVisible(bool(problem))

    def refresh(self) -> None:
        """Show the rows as they are."""
        if len(self.rows) != len(self.controls.rows):
            for widget in self.rows:
                widget.setParent(None)
                widget.deleteLater()
            self.rows = [ControlRowWidget(self, n, row) for n, row in enumerate(self.controls.rows)]
            for widget in self.rows:
                self.rows_layout.addWidget(widget)
        else:
            for widget, row in zip(self.rows, self.controls.rows, strict=True):
                widget.show_row(row)
        self.empty.setVisible(not self.rows)
        self.add_button.setEnabled(len(self.rows) < MAX_CONTROLS and bool(self.controls.document.layers))

    def _add(self) -> None:
        self.controls.add(None)
