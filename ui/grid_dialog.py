"""Generate → Variations grid…: N seeds, N variations of this seed, or an X/Y plot over one or two settings
(values as A1111's X/Y plot takes them: "1-4", "4,7,10", "0.2-0.8 [4]"). Says how many cells it makes, or
what is wrong, as the values are typed."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from backend.errors import StudioError
from backend.grids import (
    AXES,
    CONCEPT_PREFIX,
    LORA_PREFIX,
    MAX_CELLS,
    MIN_CELLS,
    Axis,
    Grid,
    parse_values,
    seed_grid,
    variation_grid,
)
from backend.request import MAX_SEED, Request

MODES = ("Seeds", "Variations of this seed", "X/Y plot")
NONE = "(none)"
# The axes offered, in the order a person looks for them (the engine decides which make sense).
OFFERED = ("seed", "guidance", "steps", "strength", "scheduler", "variation_strength", "prompt", "locality")
EXAMPLES = {"seed": "1-4", "guidance": "4,7,10", "steps": "10,20,30", "strength": "0.3-0.9 [4]"}


class GridDialog(QDialog):
    """Asks which grid to run over `request` (the panels' values); `grid()` and `changes()` give it."""

    def __init__(self, request: Request, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Variations grid")
        self.setObjectName("grid-dialog")
        self.request = request
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.count = QSpinBox(minimum=MIN_CELLS, maximum=MAX_CELLS, value=4)
        self.variations = QSpinBox(minimum=MIN_CELLS, maximum=MAX_CELLS, value=4)
        self.top = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=0.5, decimals=2)
        self.x_axis, self.y_axis = QComboBox(), QComboBox()
        self.x_values, self.y_values = QLineEdit("1-4"), QLineEdit()
        self.y_axis.addItem(NONE, "")
        for name in OFFERED:
            self.x_axis.addItem(AXES[name].label, name)
            self.y_axis.addItem(AXES[name].label, name)
        numbered = [
            (f"Concept {n}: {c.negative} → {c.positive}", f"{CONCEPT_PREFIX}{n}")
            for n, c in enumerate(request.concepts, 1)
        ] + [(f"LoRA {n}: {lora.name}", f"{LORA_PREFIX}{n}") for n, lora in enumerate(request.loras, 1)]
        for label, name in numbered:
            self.x_axis.addItem(label, name)
            self.y_axis.addItem(label, name)
        self.y_axis.setCurrentIndex(self.y_axis.findData("guidance"))
        self.y_values.setText("4,7")

        pages = QStackedWidget()
        pages.addWidget(_form(("Images", self.count)))
        pages.addWidget(_form(("Images", self.variations), ("Variation strength up to", self.top)))
        pages.addWidget(
            _form(
                ("X", self.x_axis),
                ("X values", self.x_values),
                ("Y", self.y_axis),
                ("Y values", self.y_values),
            )
        )
        self.summary = QLabel()
        self.summary.setObjectName("grid-summary")
        self.summary.setWordWrap(True)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Run grid")
        layout = QVBoxLayout(self)
        layout.addWidget(_form(("Vary", self.mode)))
        layout.addWidget(pages)
        layout.addWidget(self.summary)
        layout.addWidget(self.buttons)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self.mode.currentIndexChanged.connect(pages.setCurrentIndex)
        for signal in (
            self.mode.currentIndexChanged,
            self.count.valueChanged,
            self.variations.valueChanged,
            self.top.valueChanged,
            self.x_axis.currentIndexChanged,
            self.y_axis.currentIndexChanged,
            self.x_values.textChanged,
            self.y_values.textChanged,
        ):
            signal.connect(self._check)
        self.x_axis.currentIndexChanged.connect(self._example)
        self._check()

    def changes(self) -> dict[str, object]:
        """Other changes the grid needs: variations need a variation seed (the seed + 1 unless set)."""
        if self.mode.currentIndex() == 1 and self.request.variation_seed is None:
            return {"variation_seed": (self.request.seed + 1) % (MAX_SEED + 1)}
        return {}

    def grid(self) -> Grid:
        """The grid chosen; RequestError when the values do not make one."""
        mode = self.mode.currentIndex()
        if mode == 0:
            return seed_grid(self.request.seed, self.count.value())
        if mode == 1:
            return variation_grid(self.variations.value(), round(self.top.value(), 4))
        x_name = str(self.x_axis.currentData())
        x = Axis(x_name, parse_values(x_name, self.x_values.text()))
        y_name = str(self.y_axis.currentData())
        y = Axis(y_name, parse_values(y_name, self.y_values.text())) if y_name else None
        return Grid(x, y)

    def _check(self) -> None:
        """Say how many cells, or what is wrong; Run only when the grid is good."""
        ok = False
        try:
            grid = self.grid()
            self.request.replace(grid=grid, **self.changes()).validate()
            columns, rows = grid.shape
            shape = f"{columns} × {rows}" if grid.y is not None else f"{columns}"
            self.summary.setText(f"{grid.count} images ({shape}), batched where the engine can")
            ok = True
        except StudioError as exc:
            self.summary.setText(str(exc))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def _example(self) -> None:
        name = str(self.x_axis.currentData())
        if name in EXAMPLES:
            self.x_values.setText(EXAMPLES[name])
        elif name.startswith((CONCEPT_PREFIX, LORA_PREFIX)):
            self.x_values.setText("0-1.5 [4]")


def _form(*rows: tuple[str, QWidget]) -> QWidget:
    widget = QWidget()
    form = QFormLayout(widget)
    form.setContentsMargins(0, 0, 0, 0)
    for label, field in rows:
        form.addRow(label, field)
    return widget
