"""LoRA sliders: one strength slider per LoRA in the request, live like the other sliders, and "Add LoRA…"
with the LoRAs found in the model folders (models/Lora, models/loras) and the LoRA folders in the settings.

Moving a slider changes only that LoRA's strength: the engine sets adapter weights and reloads nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from backend.request import MAX_LORAS, Lora, Request
from studio.session import Session
from ui.model_folders import add_kind, choose_folder, file_filter, pickles_allowed
from ui.prompt_panel import tool_button
from ui.workers import ModelLookup, labelled_models

if TYPE_CHECKING:
    from ui.slider_panel import ValueSlider


def _find_loras(
    model_folders: tuple[str, ...], lora_folders: tuple[str, ...], allow_pickle: bool
) -> list[tuple[str, str]]:
    """(name, path) of the LoRAs found (pickles only when allowed, marked); runs on a worker thread."""
    from backend.loras import discover_loras

    return labelled_models(discover_loras, allow_pickle, model_folders, lora_folders)


class LoraBox(QGroupBox):
    """The request's LoRAs as strength sliders (shown for the diffusers engine)."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__("LoRAs", parent)
        from ui.slider_panel import ValueSlider  # the panel that holds this box defines the slider

        self._slider_class = ValueSlider  # imported here: slider_panel imports this module
        self.session, self.model = session, session.model
        settings = session.settings
        self.folders = (
            tuple(settings.model_folders) if settings else (),
            tuple(settings.lora_folders) if settings else (),
        )
        self.sliders: dict[str, ValueSlider] = {}
        self.lookup = ModelLookup("loras", _find_loras, self)
        self.lookup.ready.connect(self._found)
        self.rows_layout = QVBoxLayout()
        self.empty = QLabel("No LoRA: add one, or type <lora:NAME:0.8> in the prompt.")
        self.empty.setWordWrap(True)
        self.add_button = QPushButton("Add LoRA…")
        self.menu = QMenu(self)
        self.add_button.setMenu(self.menu)
        self.menu.aboutToShow.connect(self._fill_menu)
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addLayout(self.rows_layout)
        layout.addWidget(self.add_button)
        self.model.field("loras").connect(self._show)
        self.model.group("engine", "model").connect(self._show_engine)
        self._show(self.model.request.loras)
        self._show_engine(self.model.request)

    # -- showing --------------------------------------------------------------------------------------------
    @Slot(object)
    def _show_engine(self, request: Request) -> None:
        self.setVisible(request.engine == "diffusers")

    @Slot(object)
    def _show(self, loras: tuple[Lora, ...]) -> None:
        if [x.name for x in loras] != list(self.sliders):
            self._rebuild(loras)
        for lora in loras:
            self.sliders[lora.name].show_value(lora.strength)
        self.empty.setVisible(not loras)
        self.add_button.setEnabled(len(loras) < MAX_LORAS)

    def _rebuild(self, loras: tuple[Lora, ...]) -> None:
        while self.rows_layout.count():
            item = self.rows_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.setParent(None)  # off the box at once; deleted when Qt gets to it
                widget.deleteLater()
        self.sliders = {}
        for lora in loras:
            # The name above its slider (as concept sliders do), so long names never widen the panel.
            slider = self._slider_class(-2.0, 2.0, 1.0)
            slider.setToolTip(f"How strongly the LoRA {lora.name} acts (A1111's <lora:NAME:STRENGTH>)")
            slider.moved.connect(self._strength_setter(lora.name))
            remove = tool_button("✕", f"Remove the LoRA {Path(lora.name).stem}")
            remove.clicked.connect(self._remover(lora.name))
            label = QLabel(Path(lora.name).stem)
            label.setToolTip(lora.name)
            label.setMinimumWidth(1)  # elided by the layout rather than widening it
            head = QHBoxLayout()
            head.addWidget(label, 1)
            head.addWidget(remove)
            row = QWidget()
            column = QVBoxLayout(row)
            column.setContentsMargins(0, 0, 0, 4)
            column.addLayout(head)
            column.addWidget(slider)
            self.rows_layout.addWidget(row)
            self.sliders[lora.name] = slider

    # -- editing --------------------------------------------------------------------------------------------
    def _strength_setter(self, name: str):  # noqa: ANN202 - a slot for one slider
        def set_strength(value: float) -> None:
            """Set this LoRA's strength (nothing is reloaded)."""
            loras = self.model.request.loras
            self.model.set(loras=tuple(Lora(x.name, value) if x.name == name else x for x in loras))

        return set_strength

    def _remover(self, name: str):  # noqa: ANN202 - a slot for one button
        def remove() -> None:
            """Take this LoRA out of the request."""
            self.model.set(loras=tuple(x for x in self.model.request.loras if x.name != name))

        return remove

    def add(self, name: str, strength: float = 1.0) -> None:
        """Add a LoRA (a path or a name found in the folders) at `strength`, unless it is already there."""
        loras = self.model.request.loras
        if name and all(x.name != name for x in loras) and len(loras) < MAX_LORAS:
            self.model.set(loras=(*loras, Lora(name, strength)))

    def _fill_menu(self) -> None:
        self.menu.clear()
        if self.found is None:
            self._note("Looking for LoRAs…")
            self._look()
        else:
            for name, path in self.found:
                action = QAction(name, self.menu)
                action.setToolTip(path)
                action.triggered.connect(lambda _=False, p=path: self.add(p))
                self.menu.addAction(action)
            if not self.found:
                self._note("None in models/Lora, models/loras or the LoRA folders")
        self.menu.addSeparator()
        choose = QAction("Choose a file…", self.menu)
        choose.triggered.connect(self._choose_file)
        self.menu.addAction(choose)
        folder = QAction("Add a folder to look in…", self.menu)
        folder.setToolTip("An A1111 or ComfyUI install, or a folder of LoRA files; kept in the settings")
        folder.triggered.connect(self._add_folder)
        self.menu.addAction(folder)

    def _note(self, text: str) -> None:
        note = QAction(text, self.menu)
        note.setEnabled(False)
        self.menu.addAction(note)

    @property
    def found(self) -> list[tuple[str, str]] | None:
        """The LoRAs found, (name, path); None until the look has ended."""
        return self.lookup.found

    def _look(self) -> None:
        self.lookup.look(*self.folders, pickles_allowed(self.session))

    @Slot()
    def _found(self) -> None:
        if self.menu.isVisible():
            self._fill_menu()

    def _add_folder(self) -> None:
        folder = choose_folder(self, self.session)
        if folder is not None:
            models, loras = self.folders
            self.folders = (
                (models, (*loras, folder)) if add_kind(folder) == "lora" else ((*models, folder), loras)
            )
            self.look_again()

    def look_again(self) -> None:
        """Discover the LoRAs again (a folder was added, or pickles were allowed or refused)."""
        self.lookup.again(*self.folders, pickles_allowed(self.session))

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a LoRA", "", file_filter("LoRA files", self.session)
        )
        if path:
            self.add(path)
