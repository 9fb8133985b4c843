"""The one protocol every engine follows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from backend.events import Event
from backend.request import Request


@runtime_checkable
class Engine(Protocol):
    """Runs a request step by step.

    `generate` yields a StepEvent after every denoising step and, unless `cancel` was set, one Done.
    Cancel is checked at every step boundary and before any decode; a cancelled run yields no Done.
    Errors a person can act on are raised as backend.errors.StudioError.
    """

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]: ...
