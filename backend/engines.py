"""One entry point over every engine: dispatch each request to the engine it names."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from backend.engine import Engine
from backend.events import Event
from backend.request import Request

if TYPE_CHECKING:
    from backend.sr_models import Upscaler


class Engines:
    """Holds one engine per kind, created on first use, and runs each request on the one it names.

    Engines keep loaded models between requests, so one long-lived `Engines` belongs to the one thread
    that owns torch and the device.
    """

    def __init__(self, **options: Any) -> None:
        self.options = options  # device, dtype, taesd folder, model folders: passed to each engine
        self._engines: dict[str, Engine] = {}
        self.remote: Engine | None = None  # a studio server's engine (backend/remote.py) that runs everything
        self._upscaler: tuple[tuple[str, float], Upscaler] | None = None  # (file, mtime), the loaded model

    def get(self, name: str) -> Engine:
        """The engine called `name`, created on first use."""
        if name not in self._engines:
            self._engines[name] = _create(name, self.options)
        return self._engines[name]

    def add_folders(self, model_folders: Sequence[str] = (), lora_folders: Sequence[str] = ()) -> None:
        """Look in these folders too from the next request on (folders a person adds in the window)."""
        for key, more in (("model_folders", model_folders), ("lora_folders", lora_folders)):
            merged = tuple(dict.fromkeys((*self.options.get(key, ()), *more)))
            self.options[key] = merged
            for engine in self._engines.values():
                if hasattr(engine, key):  # a tuple swapped whole: the engine thread reads one or the other
                    setattr(engine, key, merged)

    def use_remote(self, engine: Engine | None) -> None:
        """Run every request from the next one on with `engine` (a RemoteEngine); None: on this machine."""
        self.remote = engine

    def upscaler(self, ref: str) -> Upscaler:
        """The super-resolution model `ref` (a file, or a name in the model folders), kept loaded."""
        from backend.devices import pick_device
        from backend.sr_models import load_upscaler, resolve_upscaler

        path = resolve_upscaler(ref, tuple(self.options.get("model_folders", ())))
        key = (str(path), path.stat().st_mtime)
        if self._upscaler is None or self._upscaler[0] != key:
            self._upscaler = None  # free the old one before loading the next
            device = pick_device(self.options.get("device"))
            self._upscaler = key, load_upscaler(path, device, bool(self.options.get("allow_pickle")))
        return self._upscaler[1]

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Validate the request and run it on its engine (a grid: each of its cells, backend/grid_run.py;
        an upscale: super-resolution and a tiled refine, backend/upscale.py)."""
        request.validate()
        remote = self.remote  # read once: the window may switch servers while this run goes on
        engine = remote if remote is not None else self.get(request.engine)
        if request.upscale is not None:  # the model file is here; the refine runs where the engine is
            from backend.upscale import run_upscale

            return run_upscale(engine, self.upscaler, request, cancel)
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
