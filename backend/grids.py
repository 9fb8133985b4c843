"""Variation grids: a request's `grid` names one or two axes (seed, guidance, strength, a slider, ...) and the
values to try; each cell is the base request with those values put in, as A1111's X/Y/Z plot does.

A batch of N seeds is a one-axis grid over the seed; "variations" a one-axis grid over the variation
strength of one seed. Each cell is an ordinary request (no grid) whose image equals its own single run;
`backend/grid_run.py` runs the cells, batched through the UNet where the engine can.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backend.errors import RequestError

if TYPE_CHECKING:
    from backend.request import Request

MIN_CELLS, MAX_CELLS = 2, 16
Value = int | float | str


@dataclass(frozen=True)
class AxisKind:
    """What an axis changes: its A1111 label, the type of its values and the request field it sets."""

    label: str  # A1111's "X Type" name
    kind: type  # int, float or str
    field: str  # the Request field, or "" for axes that need code (prompt S/R, a concept's weight)


# Axis names (and the A1111 labels, which are also accepted) → what they change.
AXES: dict[str, AxisKind] = {
    "seed": AxisKind("Seed", int, "seed"),
    "variation_seed": AxisKind("Var. seed", int, "variation_seed"),
    "variation_strength": AxisKind("Var. strength", float, "variation_strength"),
    "steps": AxisKind("Steps", int, "steps"),
    "guidance": AxisKind("CFG Scale", float, "guidance"),
    "strength": AxisKind("Denoising", float, "strength"),
    "scheduler": AxisKind("Sampler", str, "scheduler"),
    "prompt": AxisKind("Prompt S/R", str, ""),
    "blend": AxisKind("Prompt blend", float, "blend"),
    "locality": AxisKind("Locality", float, "locality"),
}
ALIASES = {
    "cfg": "guidance",
    "cfg_scale": "guidance",
    "denoising": "strength",
    "sampler": "scheduler",
    "var_strength": "variation_strength",
    "var_seed": "variation_seed",
    "prompt_sr": "prompt",
    **{k.label.lower(): name for name, k in AXES.items()},
}
CONCEPT_PREFIX = "concept:"  # concept:N, the weight of the request's N-th concept slider (1-based)
CONCEPT_LABEL = "Concept"
LORA_PREFIX = "lora:"  # lora:N, the strength of the request's N-th LoRA (1-based)
LORA_LABEL = "LoRA"
# Numbered axes: prefix → (label, the request field holding the list, the attribute each value sets)
NUMBERED = {
    CONCEPT_PREFIX: (CONCEPT_LABEL, "concepts", "weight"),
    LORA_PREFIX: (LORA_LABEL, "loras", "strength"),
}


@dataclass(frozen=True)
class Axis:
    """One grid axis: what it changes (a key of AXES, or "concept:N") and the values to try, in order."""

    name: str
    values: tuple[Value, ...]

    @property
    def label(self) -> str:
        """A1111's name for the axis ("Seed", "CFG Scale", ...; "Concept 1", "LoRA 2" for numbered ones)."""
        numbered = _numbered(self.name)
        if numbered is not None:
            prefix, index = numbered
            return f"{NUMBERED[prefix][0]} {index}"
        return AXES[self.name].label

    def value_label(self, value: Value) -> str:
        """How one value is written under the grid: "Seed: 5", "CFG Scale: 7.5"."""
        shown = _number(value) if isinstance(value, float) else str(value)
        return f"{self.label}: {shown}"


@dataclass(frozen=True)
class Grid:
    """The axes of a grid: cells run row by row, x varying fastest."""

    x: Axis
    y: Axis | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(columns, rows)."""
        return len(self.x.values), len(self.y.values) if self.y is not None else 1

    @property
    def count(self) -> int:
        """How many cells."""
        columns, rows = self.shape
        return columns * rows

    def axes(self) -> tuple[Axis, ...]:
        """x, then y when there is one."""
        return (self.x,) if self.y is None else (self.x, self.y)

    def positions(self) -> Iterator[tuple[int, int]]:
        """(column, row) of every cell in run order."""
        columns, rows = self.shape
        for row in range(rows):
            for column in range(columns):
                yield column, row


def canonical_axis(name: str) -> str:
    """The axis name for what a person typed ("cfg", "CFG Scale", "concept:2"); RequestError if unknown."""
    key = name.strip().lower().replace("-", "_")
    match = re.match(r"^(concept|slider|lora)\s*[: ]\s*(.*)$", key)
    if match is not None:
        prefix = LORA_PREFIX if match[1] == "lora" else CONCEPT_PREFIX
        number = match[2].strip()
        if not number.isdigit() or int(number) < 1:
            what = "LoRA" if prefix == LORA_PREFIX else "concept slider"
            raise RequestError(f"grid axis {name!r}: name a {what} by its number, e.g. {prefix}1")
        return f"{prefix}{int(number)}"
    key = ALIASES.get(key, key).replace(" ", "_")
    if key not in AXES:
        known = ", ".join([*AXES, "concept:N", "lora:N"])
        raise RequestError(f"unknown grid axis {name!r}; choose one of {known}")
    return key


def _numbered(name: str) -> tuple[str, int] | None:
    """(prefix, 1-based index) of a numbered axis name ("lora:2"), else None."""
    for prefix in NUMBERED:
        if name.startswith(prefix):
            return prefix, int(name.removeprefix(prefix))
    return None


def axis_kind(name: str) -> type:
    """int, float or str: the type of an axis's values."""
    return float if _numbered(name) is not None else AXES[name].kind


_RANGE = re.compile(
    r"^\s*(?P<a>[-+]?\d*\.?\d+)\s*-\s*(?P<b>[-+]?\d*\.?\d+)\s*"
    r"(?:\(\s*(?P<step>[-+]?\d*\.?\d+)\s*\)|\[\s*(?P<count>\d+)\s*\])?\s*$"
)


def parse_values(name: str, text: str) -> tuple[Value, ...]:
    """Values as A1111 writes them: "1,2,3", ranges "1-5", "1-9 (+2)", "0.5-1.5 [5]" (five evenly spaced).

    Text values (a sampler, Prompt S/R words) are split on commas only.
    """
    kind = axis_kind(name)
    if kind is str:  # A1111 reads text values as CSV, so a value may hold a comma in quotes
        parts = [p.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for p in row]
    else:
        parts = text.split(",")
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise RequestError(f"grid axis {name}: no values given")
    if kind is str:
        return tuple(parts)
    values: list[Value] = []
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            values.append(_scalar(name, part, kind))
            continue
        a, b = float(match["a"]), float(match["b"])
        if match["count"] is not None:
            n = int(match["count"])
            if n < 1:
                raise RequestError(f"grid axis {name}: {part!r} asks for no values")
            points = [a + (b - a) * i / (n - 1) for i in range(n)] if n > 1 else [a]
        else:
            step = float(match["step"]) if match["step"] is not None else (1.0 if b >= a else -1.0)
            if step == 0 or (b - a) * step < 0:
                raise RequestError(f"grid axis {name}: the range {part!r} never reaches its end")
            count = int(abs(b - a) / abs(step) + 1e-9) + 1
            if count > MAX_CELLS:
                raise RequestError(f"grid axis {name}: {part!r} gives {count} values; at most {MAX_CELLS}")
            points = [a + step * i for i in range(count)]
        values.extend(int(round(p)) if kind is int else round(p, 6) for p in points)
    return tuple(values)


def _scalar(name: str, text: str, kind: type) -> Value:
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        raise RequestError(f"grid axis {name}: {text!r} is not a {kind.__name__} value") from None


def parse_axis(spec: str) -> Axis:
    """One "NAME=values" axis as typed on the command line."""
    if "=" not in spec:
        raise RequestError(f"grid axis {spec!r} should look like NAME=values, e.g. seed=1-4 or cfg=4,7,10")
    name, text = spec.split("=", 1)
    canonical = canonical_axis(name)
    return Axis(canonical, parse_values(canonical, text))


def parse_grid(spec: str) -> Grid:
    """ "X=values[;Y=values]" → a Grid."""
    parts = [p for p in spec.split(";") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise RequestError("a grid has one or two axes: X=values or X=values;Y=values")
    axes = [parse_axis(p) for p in parts]
    return Grid(axes[0], axes[1] if len(axes) > 1 else None)


def seed_grid(seed: int, count: int) -> Grid:
    """A batch: `count` consecutive seeds from `seed` (A1111's batch count)."""
    from backend.request import MAX_SEED

    return Grid(Axis("seed", tuple((seed + i) % (MAX_SEED + 1) for i in range(count))))


def variation_grid(count: int, top: float = 0.5) -> Grid:
    """`count` variations of one seed, at variation strengths rising evenly to `top`."""
    return Grid(Axis("variation_strength", tuple(round(top * (i + 1) / count, 6) for i in range(count))))


def cell_request(base: Request, grid: Grid, column: int, row: int) -> Request:
    """The request of one cell: `base` with this cell's values put in, and no grid."""
    changes: dict[str, Any] = {"grid": None}
    values = [(grid.x, grid.x.values[column])]
    if grid.y is not None:
        values.append((grid.y, grid.y.values[row]))
    prompt_sr = [(a, v) for a, v in values if a.name == "prompt"]
    for axis, value in values:
        numbered = _numbered(axis.name)
        if numbered is not None:
            prefix, index = numbered
            _, field, attribute = NUMBERED[prefix]
            items = list(changes.get(field, getattr(base, field)))
            items[index - 1] = replace(items[index - 1], **{attribute: float(value)})
            changes[field] = tuple(items)
        elif axis.name != "prompt":
            changes[AXES[axis.name].field] = value
    for axis, value in prompt_sr:  # A1111's Prompt S/R: the first value is the words to replace
        search = str(axis.values[0])
        for key in ("prompt", "negative_prompt"):
            text = changes.get(key, getattr(base, key))
            changes[key] = text.replace(search, str(value))
    return base.replace(**changes)


def cells(request: Request) -> list[Request]:
    """The cell requests of a grid request, in run order (x fastest)."""
    grid = request.grid
    if grid is None:
        return [request]
    return [cell_request(request, grid, column, row) for column, row in grid.positions()]


def problems(request: Request) -> Iterator[str]:
    """What is wrong with a request's grid, as messages a person can act on."""
    grid = request.grid
    if grid is None:
        return
    if not isinstance(grid, Grid):
        yield "the grid is not a grid description"
        return
    if not MIN_CELLS <= grid.count <= MAX_CELLS:
        yield f"a grid has {MIN_CELLS} to {MAX_CELLS} cells; this one has {grid.count}"
    if grid.y is not None and grid.y.name == grid.x.name:
        yield f"the grid's two axes both change {grid.x.label}; choose two different ones"
    for axis in grid.axes():
        name = axis.name
        numbered = _numbered(name)
        if numbered is not None:
            prefix, index = numbered
            field = NUMBERED[prefix][1]
            have = len(getattr(request, field))
            if index > have:
                things = "LoRAs" if field == "loras" else "concept sliders"
                yield f"grid axis {axis.label}: the request has {have} {things}"
        elif name not in AXES:
            yield f"unknown grid axis {name!r}"
            continue
        kind = axis_kind(name)
        for value in axis.values:
            if kind is str and not isinstance(value, str):
                yield f"grid axis {axis.label}: {value!r} is not text"
            elif kind is not str and (isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
                yield f"grid axis {axis.label}: {value!r} is not a number"
            elif kind is int and not isinstance(value, int):
                yield f"grid axis {axis.label}: {value!r} is not a whole number"
        if name == "prompt" and axis.values and str(axis.values[0]) not in request.prompt:
            yield f"Prompt S/R: the prompt does not contain {axis.values[0]!r}, the words to replace"
    if problems_in_cells := _cell_problem(request):
        yield problems_in_cells


def _cell_problem(request: Request) -> str | None:
    """The first problem of any cell (a guidance of 80, a strength above 1), named with the cell's values."""
    grid = request.grid
    assert grid is not None
    for column, row in grid.positions():
        try:
            cell = cell_request(request, grid, column, row)
        except (IndexError, TypeError, ValueError):
            return "the grid's values do not fit the request"
        cell_problems = list(_validate(cell))
        if cell_problems:
            where = ", ".join(axis.value_label(v) for axis, v in _cell_values(grid, column, row))
            return f"grid cell {where}: {cell_problems[0]}"
    return None


def _validate(cell: Request) -> Iterator[str]:
    from backend.request import _problems

    yield from _problems(cell)


def _cell_values(grid: Grid, column: int, row: int) -> list[tuple[Axis, Value]]:
    out: list[tuple[Axis, Value]] = [(grid.x, grid.x.values[column])]
    if grid.y is not None:
        out.append((grid.y, grid.y.values[row]))
    return out


def cell_labels(grid: Grid, column: int, row: int) -> list[str]:
    """The cell's values as labels ("Seed: 5", "CFG Scale: 7")."""
    return [axis.value_label(value) for axis, value in _cell_values(grid, column, row)]


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else f"{x:g}"


def values_text(axis: Axis) -> str:
    """The axis values as A1111 writes "X Values" (text values CSV-quoted when they hold a comma)."""
    if axis_kind(axis.name) is str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([str(v) for v in axis.values])
        return out.getvalue()
    return ", ".join(_number(float(v)) if isinstance(v, float) else str(v) for v in axis.values)


def grid_to_json(grid: Grid) -> dict[str, Any]:
    """The grid as JSON values (for recipes)."""
    out: dict[str, Any] = {"x": {"name": grid.x.name, "values": list(grid.x.values)}}
    if grid.y is not None:
        out["y"] = {"name": grid.y.name, "values": list(grid.y.values)}
    return out


def grid_from_json(data: Any) -> Grid:
    """The Grid a `grid_to_json` dict describes; RequestError naming what is wrong."""

    def axis(value: Any, which: str) -> Axis:
        if not isinstance(value, dict) or not isinstance(value.get("values"), list):
            raise RequestError(f"the grid's {which} axis should have a name and a list of values")
        name = canonical_axis(str(value.get("name", "")))
        values = value["values"]
        if len(values) > MAX_CELLS or not all(
            isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values
        ):
            raise RequestError(
                f"the grid's {which} axis values should be at most {MAX_CELLS} numbers or words"
            )
        kind = axis_kind(name)
        if kind is float:
            values = [float(v) if isinstance(v, (int, float)) else v for v in values]
        return Axis(name, tuple(values))

    if not isinstance(data, dict) or "x" not in data:
        raise RequestError("the grid should be an object with an x axis")
    return Grid(axis(data["x"], "x"), axis(data["y"], "y") if data.get("y") is not None else None)
