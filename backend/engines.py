"""One entry point over every engine: dispatch each request to the engine it names."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from backend.engine import Engine
from backend.events import Event
from backend.request import Request


class Engines:
    """Holds one engine per kind, created on first use, and runs each request on the one it names.

    Engines keep loaded models between requests, so one long-lived `Engines` belongs to the one thread
    that owns torch and the device.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options  # device, dtype, taesd folder, model folders: passed to each engine
        self._engines: dict[str, Engine] = {}
        self.remote: Engine | None = None  # a studio server's engine (backend/remote.py) that runs everything

    def get(self, name: str) -> Engine:
        """The engine called `name`, created on first use."""
        if name not in self._engines:
            self._engines[name] = _create(name, self.options)
        return self._engines[name]

    def use_remote(self, engine: Engine | None) -> None:
        """Run every request from the next one on with `engine` (a RemoteEngine); None: on this machine."""
        self.remote = engine

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Validate the request and run it on its engine (a grid: each of its cells, backend/grid_run.py)."""
        request.validate()
        remote = self.remote  # read once: the window may switch servers while this run goes on
        engine = remote if remote is not None else self.get(request.engine)
        if request.grid is not None:
            from backend.grid_run import run_grid

            return run_grid(engine, request, cancel)
        return engine.generate(request, cancel)


def _create(name: str, options: dict[str, Any]) -> Engine:
    if name == "patch":
        from backend.patch_engine import PatchEngine

        return PatchEngine(**options)
    if name == "diffusers":
        from backend.diffusers_engine import DiffusersEngine

        return DiffusersEngine(**options)
    from backend.errors import RequestError

    raise RequestError(f"unknown engine {name!r}")
