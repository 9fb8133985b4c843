"""The undo history of a document: done and undone commands, bounded by memory, and the saved position.

Positions count every command ever done since the document was reset, including those dropped from the
bottom when the history outgrew its memory limit, so "the state that was saved" stays meaningful after
the oldest steps are gone (and becomes unreachable, never wrongly reachable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Sized(Protocol):
    """What the history needs of a command: how many bytes it keeps alive."""

    @property
    def nbytes(self) -> int: ...


C = TypeVar("C", bound=Sized)


@dataclass(frozen=True)
class SavePoint:
    """A position in the history and the command just below it: what a save in progress wrote."""

    position: int
    command: object | None


class History(Generic[C]):
    """Undo and redo lists with a memory limit; the oldest steps are dropped to stay under it."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.done: list[C] = []
        self.undone: list[C] = []
        self.base = 0  # commands dropped from the bottom of `done`
        self.clean_at: int | None = 0  # position of the saved state; None when it can't be reached
        self.bytes = 0  # memory held by the commands in both lists
        self.dropped = 0  # steps dropped to respect the limit since the last reset

    @property
    def position(self) -> int:
        """How many commands lie below the current state (dropped ones included)."""
        return self.base + len(self.done)

    @property
    def is_clean(self) -> bool:
        """True when the current state is the saved one."""
        return self.clean_at == self.position

    def did(self, command: C) -> None:
        """A new command was done: it goes on top, the redo list goes away, old steps may be dropped."""
        self.done.append(command)
        self.bytes += command.nbytes - sum(c.nbytes for c in self.undone)
        self.undone.clear()
        if self.clean_at is not None and self.clean_at > self.position - 1:
            self.clean_at = None  # the saved state was in the redo list and is now unreachable
        self._trim()

    def undid(self) -> C | None:
        """Move the top command to the redo list and return it (None when there is nothing to undo)."""
        if not self.done:
            return None
        command = self.done.pop()
        self.undone.append(command)
        return command

    def redid(self) -> C | None:
        """Move the last undone command back on top and return it (None when there is nothing to redo)."""
        if not self.undone:
            return None
        command = self.undone.pop()
        self.done.append(command)
        return command

    def save_point(self) -> SavePoint:
        """The current position, to mark clean once a save of this state has finished."""
        return SavePoint(self.position, self.done[-1] if self.done else None)

    def mark_clean(self, point: SavePoint | None = None) -> None:
        """The current state (or the one at `point`, if still reachable) is what the file holds."""
        if point is None:
            self.clean_at = self.position
            return
        index = point.position - self.base  # the command just below the saved state, in `done`
        reachable = 0 <= index <= len(self.done) and (index == 0 or self.done[index - 1] is point.command)
        self.clean_at = point.position if reachable else None

    def clear(self) -> None:
        """Forget everything (a new or opened document); the empty state is the saved one."""
        self.done.clear()
        self.undone.clear()
        self.base = 0
        self.clean_at = 0
        self.bytes = 0
        self.dropped = 0

    def _trim(self) -> None:
        # The newest step always stays, however large: a person can undo what they just did.
        while self.bytes > self.limit_bytes and len(self.done) > 1:
            self.bytes -= self.done.pop(0).nbytes
            self.base += 1
            self.dropped += 1
