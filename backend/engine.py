"""The one protocol every engine follows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from backend.errors import RequestError
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


def single_image(request: Request) -> Request:
    """The request, if it asks for one image; RequestError for a grid or an upscale, which
    backend.engines.Engines splits into such requests (cells, refine tiles) for an engine."""
    if request.grid is not None or request.upscale is not None:
        raise RequestError(
            "a grid or an upscale runs through backend.engines.Engines, which gives the engine its cells "
            "or tiles"
        )
    return request
