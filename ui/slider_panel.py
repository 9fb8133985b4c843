"""Latent sliders: variation, prompt blend, concept sliders, guidance, strength, LoRA strengths, control
layers (ui/lora_box.py, ui/control_box.py), patch-engine locality and per-reference weights. Each slider
shows its value and has a reset; every move is one `model.set`, and each slider redraws only when the
request model says its own field changed.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PySide6.QtCore import QSignalBlocker, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from backend.request import GUIDANCE_MAX, Concept, Request
from studio.session import Session
from ui.control_box import ControlBox
from ui.lora_box import LoraBox
from ui.prompt_panel import set_text, tool_button
from ui.workers import Call

TICKS = 1000  # slider positions across a range: fine enough for a smooth drag


class ValueSlider(QWidget):
    """A float slider with its value shown and a reset button."""

    moved = Signal(float)

    def __init__(self, low: float, high: float, default: float, decimals: int = 2, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.low, self.high, self.default, self.decimals = low, high, default, decimals
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, TICKS)
        self.label = QLabel()
        self.label.setMinimumWidth(40)
        self.label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.reset = tool_button("↺", f"Reset to {default:.{decimals}f}")
        self._shown: tuple[int, str] | None = None  # the tick and text on screen
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        row.addWidget(self.reset)
        self.slider.valueChanged.connect(self._slid)
        self.reset.clicked.connect(lambda: self._announce(self.default))
        self.show_value(default)

    def value(self) -> float:
        """The value the slider shows."""
        return round(self.low + (self.high - self.low) * self.slider.value() / TICKS, self.decimals)

    def show_value(self, value: float) -> None:
        """Move the slider to `value` without announcing it (values past the range pin to its end)."""
        tick = max(0, min(TICKS, round((value - self.low) / (self.high - self.low) * TICKS)))
        text = f"{value:.{self.decimals}f}"
        if (tick, text) == self._shown:
            return  # the echo of the person's own move: nothing to redraw
        self._shown = (tick, text)
        with QSignalBlocker(self.slider):
            self.slider.setValue(tick)
        self.label.setText(text)

    def _slid(self, _tick: int) -> None:
        self._announce(self.value())

    def _announce(self, value: float) -> None:
        self.show_value(value)
        self.moved.emit(value)


class ConceptRow(QWidget):
    """One concept slider: two phrases and a weight, with a remove button."""

    changed = Signal()
    remove = Signal(object)

    def __init__(self, concept: Concept, parent=None) -> None:  # noqa: ANN001
        super().__init__(parent)
        self.negative = QLineEdit(concept.negative, placeholderText="from, e.g. “plain”")
        self.positive = QLineEdit(concept.positive, placeholderText="to, e.g. “ornate”")
        self.weight = ValueSlider(-5.0, 5.0, 0.0)
        self.weight.show_value(concept.weight)
        drop = tool_button("✕", "Remove this concept slider")
        phrases = QHBoxLayout()
        phrases.addWidget(self.negative)
        phrases.addWidget(QLabel("→"))
        phrases.addWidget(self.positive)
        phrases.addWidget(drop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.addLayout(phrases)
        layout.addWidget(self.weight)
        self.start = concept.start
        self.negative.editingFinished.connect(self.changed)
        self.positive.editingFinished.connect(self.changed)
        self.weight.moved.connect(lambda _v: self.changed.emit())
        drop.clicked.connect(lambda: self.remove.emit(self))

    def concept(self) -> Concept:
        """The concept the row shows."""
        return Concept(self.positive.text(), self.negative.text(), self.weight.value(), self.start)

    def complete(self) -> bool:
        """Both phrases given (the request refuses half a concept)."""
        return bool(self.positive.text().strip() and self.negative.text().strip())


class SliderPanel(QWidget):
    """The latent sliders, bound to a Session."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        defaults = Request()
        self.variation_seed = QLineEdit(placeholderText="seed")
        dice = tool_button("Random", "A new variation seed")
        self.variation = ValueSlider(0.0, 1.0, 0.0)
        self.prompt_b = QLineEdit(placeholderText="a second prompt to blend towards")
        self.blend = ValueSlider(0.0, 1.0, 0.0)
        self.guidance = ValueSlider(0.0, GUIDANCE_MAX, defaults.guidance, 1)  # the spin box's range too
        self.strength = ValueSlider(0.0, 1.0, defaults.strength)
        self.locality = ValueSlider(0.0, 1.0, defaults.locality)
        self.locality.setToolTip("Patch size: 1 copies a reference whole, small values invent new images")
        self.concept_rows: list[ConceptRow] = []
        self.concept_box = QVBoxLayout()
        add_concept = QPushButton("Add concept slider")
        self.reference_sliders: dict[str, ValueSlider] = {}
        self.references_form = QFormLayout()

        seed_row = QHBoxLayout()
        seed_row.addWidget(self.variation_seed, 1)
        seed_row.addWidget(dice)
        form = QFormLayout()
        form.addRow("Variation seed", seed_row)
        form.addRow("Variation", self.variation)
        form.addRow("Prompt B", self.prompt_b)
        form.addRow("Blend", self.blend)
        form.addRow("Guidance", self.guidance)
        form.addRow("Strength", self.strength)
        concepts = QGroupBox("Concepts")
        concepts_layout = QVBoxLayout(concepts)
        concepts_layout.addLayout(self.concept_box)
        concepts_layout.addWidget(add_concept)
        self.patch_box = QGroupBox("Patch engine")
        patch_layout = QFormLayout(self.patch_box)
        patch_layout.addRow("Locality", self.locality)
        patch_layout.addRow(self.references_form)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(concepts)
        self.lora_box = LoraBox(session)  # diffusers engine only: they hide themselves otherwise
        self.control_box = ControlBox(session)
        layout.addWidget(self.lora_box)
        layout.addWidget(self.control_box)
        layout.addWidget(self.patch_box)
        layout.addStretch(1)

        model = session.model
        self.model = model
        self.variation_seed.editingFinished.connect(self._variation_seed_edited)
        dice.clicked.connect(lambda: model.set(variation_seed=random.randrange(2**32)))
        self.variation.moved.connect(self._variation_moved)
        self.prompt_b.textEdited.connect(self._prompt_b_edited)
        self.blend.moved.connect(lambda v: model.set(blend=v))
        self.guidance.moved.connect(lambda v: model.set(guidance=v))
        self.strength.moved.connect(lambda v: model.set(strength=v))
        self.locality.moved.connect(lambda v: model.set(locality=v))
        add_concept.clicked.connect(lambda: self._add_concept_row(Concept("", "")))
        # Each slider shows its own field, and redraws only when that field changes.
        model.field("variation_seed").connect(self._show_variation_seed)
        model.field("variation_strength").connect(self.variation.show_value)
        model.field("prompt_b").connect(self._show_prompt_b)
        model.field("blend").connect(self.blend.show_value)
        model.field("guidance").connect(self.guidance.show_value)
        model.field("strength").connect(self.strength.show_value)
        model.field("locality").connect(self.locality.show_value)
        model.field("concepts").connect(self._show_concepts)
        model.group("engine", "model").connect(self._show_patch_engine)
        model.field("reference_weights").connect(self._show_weights)
        self._references_for: str | None = None
        self._listing: Call | None = None  # reading a reference folder on a worker thread
        self.skipped_note: QLabel | None = None  # the images of the reference folder left out, if any
        self.show_request(model.request)

    def _prompt_b_edited(self, text: str) -> None:
        # A blend needs something to blend towards: clearing prompt B ends the blend too.
        self.model.set(prompt_b=text, **({} if text.strip() else {"blend": 0.0}))

    def _show_prompt_b(self, text: str) -> None:
        set_text(self.prompt_b, text)
        on = bool(text.strip())
        self.blend.setEnabled(on)
        self.blend.setToolTip(
            "How far the picture moves from the prompt towards Prompt B"
            if on
            else "Type a Prompt B first: the blend moves the picture towards it"
        )

    def _variation_seed_edited(self) -> None:
        text = self.variation_seed.text().strip()
        self.model.set(variation_seed=int(text) if text.isdigit() else None)

    def _variation_moved(self, value: float) -> None:
        changes: dict[str, object] = {"variation_strength": value}
        if value > 0 and self.model.request.variation_seed is None:
            changes["variation_seed"] = random.randrange(2**32)  # a variation needs a second seed
        self.model.set(**changes)

    def show_request(self, request: Request) -> None:
        """Put a whole request into the sliders (when the panel is built)."""
        self._show_variation_seed(request.variation_seed)
        self.variation.show_value(request.variation_strength)
        self._show_prompt_b(request.prompt_b)
        self.blend.show_value(request.blend)
        self.guidance.show_value(request.guidance)
        self.strength.show_value(request.strength)
        self.locality.show_value(request.locality)
        self._show_concepts(request.concepts)
        self._show_patch_engine(request)

    def _show_variation_seed(self, seed: int | None) -> None:
        set_text(self.variation_seed, "" if seed is None else str(seed))

    def _show_concepts(self, concepts: tuple[Concept, ...]) -> None:
        shown = tuple(row.concept() for row in self.concept_rows if row.complete())
        if shown != concepts:
            for row in list(self.concept_rows):
                self._drop_row(row, announce=False)
            for concept in concepts:
                self._add_concept_row(concept)

    def _show_patch_engine(self, request: Request) -> None:
        self.patch_box.setVisible(request.engine == "patch")
        if request.engine == "patch" and self._references_for != request.model:
            self._references_for = request.model
            self._list_references(request.model)
            self._show_weights(request.reference_weights)

    # -- concepts -----------------------------------------------------------------------------------------
    def _add_concept_row(self, concept: Concept) -> None:
        row = ConceptRow(concept)
        row.changed.connect(self._concepts_changed)
        row.remove.connect(self._drop_row)
        self.concept_rows.append(row)
        self.concept_box.addWidget(row)

    def _drop_row(self, row: ConceptRow, announce: bool = True) -> None:
        self.concept_rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        if announce:
            self._concepts_changed()

    def _concepts_changed(self) -> None:
        # Half-filled rows stay on screen but out of the request, which refuses them.
        self.model.set(concepts=tuple(row.concept() for row in self.concept_rows if row.complete()))

    # -- patch engine references --------------------------------------------------------------------------
    def _show_weights(self, weights: tuple[tuple[str, float], ...]) -> None:
        by_name = dict(weights)
        for name, slider in self.reference_sliders.items():
            slider.show_value(by_name.get(name, 0.0))

    def _list_references(self, folder: str) -> None:
        # Listing decodes every image of the folder: on a worker thread, so the window stays responsive.
        while self.references_form.rowCount():
            self.references_form.removeRow(0)
        self.reference_sliders.clear()
        self.skipped_note = None
        self.references_form.addRow(QLabel("Reading the reference images…"))
        self._listing = Call("references", _reference_names, folder)
        self._listing.finished.connect(self._references_listed)
        self._listing.start()

    @property
    def reading_references(self) -> bool:
        """True while a reference folder is being read on a worker thread."""
        return self._listing is not None

    @Slot(object, object)
    def _references_listed(self, listed: ReferenceListing, _error: object) -> None:
        folder, names, problem, skipped = listed
        if folder != self._references_for:
            return  # a folder chosen since then is being read
        self._listing = None
        self.references_form.removeRow(0)
        self.skipped_note = None
        if problem:  # a missing or broken folder: the engine reports it on Generate
            self.references_form.addRow(QLabel(f"References: {problem}"))
            return
        heading = QLabel("Reference weights: how much each reference feeds the picture")
        heading.setWordWrap(True)
        self.references_form.addRow(heading)
        if skipped:  # the engine leaves them out too: say which, and why, where the folder's sliders are
            self.skipped_note = QLabel(skipped_text(skipped))
            self.skipped_note.setWordWrap(True)
            self.skipped_note.setToolTip("\n".join(skipped))
            self.skipped_note.setObjectName("skipped-references")
            self.references_form.addRow(self.skipped_note)
        for name in names:
            slider = ValueSlider(-5.0, 5.0, 0.0, 1)
            slider.setToolTip(f"How much “{name}” feeds the image (log-prior weight)")
            slider.moved.connect(self._reference_setter(name))
            self.reference_sliders[name] = slider
            self.references_form.addRow(name, slider)
        self._show_weights(self.model.request.reference_weights)

    def _reference_setter(self, name: str) -> Callable[[float], None]:
        def set_weight(value: float) -> None:
            """Set this reference's weight; zero weights leave the recipe."""
            weights = dict(self.model.request.reference_weights)
            weights[name] = value
            kept = tuple((k, v) for k, v in weights.items() if v != 0.0)
            self.model.set(reference_weights=kept)

        return set_weight


# (folder, reference names, what went wrong with the folder, one line per image file left out)
ReferenceListing = tuple[str, list[str], str, tuple[str, ...]]
SKIPPED_SHOWN = 3  # lines in the panel; the tooltip holds them all


def skipped_text(skipped: tuple[str, ...]) -> str:
    """The panel's note on images of a reference folder that could not be used (each line names one)."""
    count = len(skipped)
    head = f"{count} image{'s' if count > 1 else ''} in this folder could not be used and are left out:"
    lines = list(skipped[:SKIPPED_SHOWN])
    if count > SKIPPED_SHOWN:
        lines.append(f"and {count - SKIPPED_SHOWN} more (see the tooltip)")
    return "\n".join([head, *(f"• {line}" for line in lines)])


def _reference_names(folder: str) -> ReferenceListing:
    """The folder, the names of its references (the default set for ""), what went wrong, if anything, and
    the image files left out. Runs on a worker thread.
    """
    from backend.references import DEFAULT_FOLDER, load_references

    try:
        found = load_references(folder or DEFAULT_FOLDER)
    except Exception as exc:  # noqa: BLE001 - shown in the panel; the engine reports it on Generate
        return folder, [], str(exc), ()
    return folder, found.names, "", found.skipped
