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
        self.options = options  # device, dtype, taesd, model folders, allow_pickle: passed to each engine
        self._engines: dict[str, Engine] = {}
        self.remote: Engine | None = None  # a studio server's engine (backend/remote.py) that runs everything
        self._upscaler: tuple[tuple[str, float, bool], Upscaler] | None = (
            None  # (file, mtime, pickles?), model
        )

    def get(self, name: str) -> Engine:
        """The engine called `name`, created on first use, and again when pickles were allowed or refused
        since it was made (its loaded model and adapters were read under the other rule)."""
        engine, options = self._engines.get(name), self.options  # options: read once (swapped whole)
        allow = bool(options.get("allow_pickle"))
        if engine is None or bool(getattr(engine, "allow_pickle", allow)) != allow:
            self._engines.pop(name, None)
            del engine  # the old model goes before the next one loads
            engine = self._engines[name] = _create(name, options)
        return engine

    def allow_pickle(self, allow: bool) -> None:
        """Load pickle files (read with torch's weights-only loader) from the next request on, or not.

        Called from the window's thread: it only swaps the options; the engine thread drops an engine made
        under the other rule at its next `get` (the run going on keeps its own reference and ends as begun).
        An engine being made meanwhile carries the old rule, so the next `get` makes it again.
        """
        self.options = {**self.options, "allow_pickle": bool(allow)}

    def add_folders(self, model_folders: Sequence[str] = (), lora_folders: Sequence[str] = ()) -> None:
        """Look in these folders too from the next request on (folders a person adds in the window)."""
        for key, more in (("model_folders", model_folders), ("lora_folders", lora_folders)):
            merged = tuple(dict.fromkeys((*self.options.get(key, ()), *more)))
            self.options[key] = merged
            for engine in tuple(self._engines.values()):  # the engine thread may add or drop one
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
        allow = bool(self.options.get("allow_pickle"))
        key = (str(path), path.stat().st_mtime, allow)
        if self._upscaler is None or self._upscaler[0] != key:
            self._upscaler = None  # free the old one before loading the next
            device = pick_device(self.options.get("device"))
            self._upscaler = key, load_upscaler(path, device, allow)
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
