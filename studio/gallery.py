"""Finished results and the lineage graph that links each one to what it was made from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from backend.request import Request
from studio.layers import new_id


@dataclass(frozen=True, eq=False)
class Result:
    """One finished generation: the image, the request that made it, and where it came from.

    `parents` are the ids of the results (or imported images) it was made from: the init image, the
    result it varied, the layer it inpainted. `painted` says a person painted on that parent in between.
    A grid is one entry whose `cells` are the ids of its cells, in run order; each cell is a result of its
    own (its recipe, the grid's parents) whose `group` is the grid's id.
    """

    image: np.ndarray  # H×W×3 uint8
    request: Request
    extras: dict[str, Any] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    painted: bool = False
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    attribution: np.ndarray | None = None
    group: str | None = None  # the grid this result is a cell of
    cells: tuple[str, ...] = ()  # a grid's cells, in run order


class Gallery(QObject):
    """The results of a session, newest last, with lineage lookups."""

    added = Signal(object)  # Result
    removed = Signal(str)  # result id
    reset = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.results: list[Result] = []

    def add(self, result: Result) -> None:
        """Append a result."""
        self.results.append(result)
        self.added.emit(result)

    def remove(self, result_id: str) -> None:
        """Drop a result (a grid with its cells) from the gallery; its descendants keep their parent ids."""
        found = self.get(result_id)
        gone = {result_id, *(found.cells if found is not None else ())}
        self.results = [r for r in self.results if r.id not in gone]
        for cell in found.cells if found is not None else ():
            self.removed.emit(cell)
        self.removed.emit(result_id)

    def add_grid(self, grid: Result, cells: list[Result]) -> None:
        """Append a grid and its cells (the cells first, so a grid entry always finds them)."""
        for cell in cells:
            self.add(cell)
        self.add(grid)

    def cells_of(self, result_id: str) -> list[Result]:
        """A grid's cells in run order (empty for anything else)."""
        found = self.get(result_id)
        if found is None:
            return []
        by_id = {r.id: r for r in self.results if r.group == result_id}
        return [by_id[c] for c in found.cells if c in by_id]

    def replace_all(self, results: list[Result]) -> None:
        """Replace every result (an opened project)."""
        self.results = list(results)
        self.reset.emit()

    def get(self, result_id: str) -> Result | None:
        """The result with this id, or None."""
        return next((r for r in self.results if r.id == result_id), None)

    def chain(self, result_id: str) -> list[Result]:
        """The result and its ancestors, newest first, following first parents that are in the gallery."""
        out: list[Result] = []
        seen: set[str] = set()
        current = self.get(result_id)
        while current is not None and current.id not in seen:
            out.append(current)
            seen.add(current.id)
            current = next((p for p in (self.get(pid) for pid in current.parents) if p is not None), None)
        return out

    def edges(self) -> list[tuple[str, str]]:
        """The lineage graph as (parent id, child id) pairs."""
        return [(parent, r.id) for r in self.results for parent in r.parents]
