"""The session: the panels' request, the document and gallery, and the actions that run the engine.

Every edit in the panels is `session.set(field=value)`: the session replaces its frozen request (an equal
value emits nothing) and, with live on, offers a run to the live scheduler. A run's request is the panels'
request completed from the document: the canvas size, and for img2img / inpaint the visible canvas as the
init image (and the mask). Events from the engine thread arrive through the EngineHost; the session drops
those of stale runs, so only the current run paints frames and adds a result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from backend.engine import Engine
from backend.errors import RequestError, StudioError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.request import Request
from studio.document import Command, Document, Layer, MoveLayer, blank_pixels, composite, new_id, rgb_to_rgba
from studio.engine_host import EngineHost
from studio.gallery import Gallery, Result
from studio.live import LiveScheduler
from studio.prompts import clean_prompt
from studio.settings import Settings

log = logging.getLogger(__name__)

MODES = ("txt2img", "img2img", "inpaint")
HISTORY_SIZE = 50
LAYER_NAME_CHARS = 40


@dataclass(frozen=True)
class Lineage:
    """Where a run's input came from, fixed when the run is submitted."""

    parents: tuple[str, ...] = ()
    painted: bool = False
    live: bool = False


class Session(QObject):
    """Observable state of one studio window and the actions on it (no widgets).

    Signals:
      request_changed(Request)   the panels' request changed (never for an equal value)
      mode_changed(str)          "txt2img", "img2img" or "inpaint"
      live_changed(bool)         live re-rendering switched on or off
      history_changed()          `prompt_history` changed
      running_changed(bool)      a run of this session started or ended
      run_started(Request)       the engine began the current run
      frame(StepEvent)           a preview frame of the current run (stale runs' frames are dropped)
      progress(int, int, float)  step, total steps, seconds per step of the current run
      result_added(Result)       a run finished: its layer is on the document, its entry in the gallery
      run_ended(str)             "done", "cancelled" or "failed"
      error(str)                 something went wrong; the message says what to do
      status(str)                a short line for the status bar
    """

    request_changed = Signal(object)
    mode_changed = Signal(str)
    live_changed = Signal(bool)
    history_changed = Signal()
    running_changed = Signal(bool)
    run_started = Signal(object)
    frame = Signal(object)
    progress = Signal(int, int, float)
    result_added = Signal(object)
    run_ended = Signal(str)
    error = Signal(str)
    status = Signal(str)

    def __init__(
        self,
        engine: Engine | None = None,
        document: Document | None = None,
        gallery: Gallery | None = None,
        settings: Settings | None = None,
        request: Request | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        if engine is None:
            from backend.engines import Engines

            engine = Engines(**(settings.engine_options() if settings else {}))
        self.document = document if document is not None else Document()
        self.gallery = gallery if gallery is not None else Gallery()
        self.host = EngineHost(engine)
        stored = settings.last_request if settings is not None and request is None else None
        base = request or stored or Request()
        self.request: Request = base.replace(
            init_image=None, mask=None, width=self.document.width, height=self.document.height
        )
        self.mode = "txt2img"
        self.live_enabled = False
        self.prompt_history: list[str] = settings.prompt_history[:HISTORY_SIZE] if settings else []
        self.current: Request | None = None  # the newest run submitted and not yet ended
        self.last_frame: StepEvent | None = None  # newest frame of the current run
        self.restored: Result | None = None  # the gallery entry whose recipe the panels hold
        self._lineage: dict[str, Lineage] = {}  # request id → lineage, for the newest run
        # The layer of the last live result while the next live result may replace it, and whether its
        # AddLayer is still the newest command (then replacing it leaves no trace in the undo history).
        self._live_layer: str | None = None
        self._live_is_last = False
        self._adding = False  # the session itself is changing the document
        self._closed = False
        self.host.started.connect(self._on_started)
        self.host.step.connect(self._on_step)
        self.host.done.connect(self._on_done)
        self.host.cancelled.connect(self._on_cancelled)
        self.host.failed.connect(self._on_failed)
        # Created after the connections above: a frame must reach the canvas before the scheduler, seeing
        # it, supersedes its run (slots run in the order they were connected).
        self.live = LiveScheduler(self.host, build=self._build_live, submit=self._submit)
        self.document.operation.connect(self._on_document_operation)
        self.document.changed.connect(self._on_document_changed)

    # -- the panels' request ---------------------------------------------------------------------------
    def set(self, **changes: object) -> None:
        """Change fields of the request; equal values change nothing; with live on, re-render."""
        if "init_image" in changes or "mask" in changes:
            raise ValueError("init image and mask come from the document: use set_mode")
        for key in ("prompt", "negative_prompt", "prompt_b"):  # where typed or pasted text enters
            text = changes.get(key)
            if isinstance(text, str):
                changes[key], notice = clean_prompt(text)
                if notice:
                    self.status.emit(notice)
        new = self.request.replace(**changes)
        if new == self.request:
            return
        if self.restored is not None and new.seed != self.restored.request.seed:
            self.restored = None  # a new seed is a new picture, no longer a variation of the restored one
        self.request = new
        self.request_changed.emit(new)
        self._changed()

    def set_mode(self, mode: str) -> None:
        """Choose txt2img, img2img (from the visible canvas) or inpaint (the masked area)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != self.mode:
            self.mode = mode
            self.mode_changed.emit(mode)
            self._changed()

    def set_live(self, on: bool) -> None:
        """Switch live re-rendering on or off; switching it on renders the current values."""
        on = bool(on)
        if on == self.live_enabled:
            return
        self.live_enabled = on
        self.live_changed.emit(on)
        if on:
            self._changed()
        else:
            self.live.discard()

    def restore(self, result: Result | str) -> None:
        """Put a result's recipe back into the panels (its init image and mask stay with the result)."""
        found = self.gallery.get(result) if isinstance(result, str) else result
        if found is None:
            self.error.emit("That result is no longer in the gallery.")
            return
        recipe = found.request
        self.restored = found  # set first, so live runs of the restored values count it as a parent
        self.set(**_panel_fields(recipe))
        if recipe.mask is not None:
            self.set_mode("inpaint")
        else:
            self.set_mode("img2img" if recipe.init_image is not None else "txt2img")

    def use_as_init(self, result: Result | str) -> Layer | None:
        """Put a result back on the canvas as a new layer and switch to img2img from the canvas."""
        found = self.gallery.get(result) if isinstance(result, str) else result
        if found is None:
            self.error.emit("That result is no longer in the gallery.")
            return None
        layer = self.document.add_layer(
            f"Init: {_layer_name(found.request.prompt)}", _fit(found.image, self.document), source=found.id
        )
        self.set_mode("img2img")
        return layer

    # -- actions ---------------------------------------------------------------------------------------
    def generate(self) -> Request | None:
        """Run the current values now; returns the run's request, or None after reporting bad input."""
        try:
            request, lineage = self.build()
        except StudioError as exc:
            self.error.emit(str(exc))
            return None
        self._remember_prompt(request.prompt)
        self._lineage[request.request_id] = lineage
        self.live.submit_now(request)
        return request

    def cancel(self) -> None:
        """Stop the current run (no result) and drop a waiting live request."""
        self.live.discard()
        self.host.cancel()

    @property
    def running(self) -> bool:
        """True from a submission until its run ends."""
        return self.current is not None

    def build(self, live: bool = False) -> tuple[Request, Lineage]:
        """The request a run would use now, completed from the document, and its lineage.

        Raises a StudioError (RequestError) with a readable message for bad input.
        """
        doc = self.document
        changes: dict[str, object] = {
            "width": doc.width,
            "height": doc.height,
            "init_image": None,
            "mask": None,
        }
        parents: list[str] = []
        painted = False
        if self.mode != "txt2img":
            # A live result that the next live run replaces is not part of that run's input.
            layers = [la for la in doc.layers if not (live and la.id == self._live_layer)]
            init = Picture(composite(layers, doc.width, doc.height))
            changes["init_image"] = init
            sources = [la for la in layers if la.visible and la.opacity > 0 and la.source]
            parents = [la.source for la in sources if la.source]
            painted = any(la.painted for la in sources)
            if not parents:
                parents = [f"image:{init.digest[:16]}"]
            if self.mode == "inpaint":
                if not doc.mask.any():
                    raise RequestError("Paint a mask over the area to repaint first (the mask brush).")
                changes["mask"] = Picture(doc.mask)
        request = self.request.replace(**changes).validate()
        if self.restored is not None and request.seed == self.restored.request.seed:
            parents.append(self.restored.id)
        return request, Lineage(tuple(dict.fromkeys(parents)), painted, live)

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop the engine thread (cancelling a run) and save preferences; True when it stopped in time."""
        self._closed = True
        self.live.discard()
        if self.settings is not None:
            self.settings.last_request = self.request
            self.settings.prompt_history = self.prompt_history
            self.settings.sync()
        return self.host.shutdown(timeout)

    # -- engine events (GUI thread) --------------------------------------------------------------------
    def _submit(self, request: Request) -> None:
        self.last_frame = None
        # Only the newest run can still add a result: forget the lineage of any other.
        self._lineage = {k: v for k, v in self._lineage.items() if k == request.request_id}
        was_running = self.current is not None
        self.current = request
        self.host.submit(request)
        if not was_running:
            self.running_changed.emit(True)

    def _is_current(self, request_id: str) -> bool:
        return not self._closed and self.current is not None and self.current.request_id == request_id

    @Slot(object)
    def _on_started(self, request: Request) -> None:
        if self._is_current(request.request_id):
            self.run_started.emit(request)
            self.status.emit(f"Generating {request.width}×{request.height}, {request.steps} steps…")

    @Slot(object)
    def _on_step(self, ev: StepEvent) -> None:
        if not self._is_current(ev.request_id):
            return  # a frame of a superseded run: never painted
        self.last_frame = ev
        if ev.preview is not None:
            self.frame.emit(ev)
        per_step = ev.elapsed_s / max(ev.step, 1)
        self.progress.emit(ev.step, ev.total, per_step)

    @Slot(object)
    def _on_done(self, done: Done) -> None:
        if not self._is_current(done.request_id):
            return
        lineage = self._lineage.get(done.request_id, Lineage())
        self._end()
        try:
            result = self._add_result(done, lineage)
        except Exception as exc:  # a result that cannot be placed must not take the window down
            log.exception("could not add the result")
            self.error.emit(f"The image was made but could not be added to the canvas: {exc}")
            self.run_ended.emit("failed")
            return
        self.result_added.emit(result)
        self.status.emit(f"Done in {done.elapsed_s:.1f} s")
        self.run_ended.emit("done")

    @Slot(object)
    def _on_cancelled(self, request: Request) -> None:
        if self._is_current(request.request_id):
            self._end()
            self.status.emit("Cancelled")
            self.run_ended.emit("cancelled")

    @Slot(object, str)
    def _on_failed(self, request: Request, message: str) -> None:
        if self._is_current(request.request_id):
            self._end()
            self.status.emit(f"Failed: {message}")
            self.error.emit(message)
            self.run_ended.emit("failed")

    def _end(self) -> None:
        self._lineage.clear()  # it only ever holds the current run's
        self.current = None
        self.last_frame = None
        self.running_changed.emit(False)

    def _add_result(self, done: Done, lineage: Lineage) -> Result:
        """The finished image as a new layer (undoable) and a gallery entry with recipe and lineage."""
        result_id = new_id()
        doc = self.document
        active = doc.active_id
        index = None  # a generated result goes above the active layer, and becomes the active one
        self._adding = True
        try:
            if lineage.live:
                index = self._take_back_live_layer()
                if index is None:
                    index = len(doc.layers)  # a live result goes on top, out of the way of painting
            layer = doc.add_layer(
                _layer_name(done.request.prompt), pixels=_fit(done.image, doc), index=index, source=result_id
            )
        finally:
            self._adding = False
        self._live_layer = layer.id if lineage.live else None
        self._live_is_last = lineage.live
        if lineage.live and active is not None and any(la.id == active for la in doc.layers):
            doc.set_active(active)  # live results must not move the brush off the layer being painted
            doc.changed.emit("layers")
        result = Result(
            image=done.image,
            request=done.request,
            extras=dict(done.extras),
            parents=lineage.parents,
            painted=lineage.painted,
            id=result_id,
            attribution=done.attribution,
        )
        self.gallery.add(result)
        self._remember_prompt(done.request.prompt)
        return result

    def _take_back_live_layer(self) -> int | None:
        """Remove the previous live result layer if it is still replaceable; its index, or None."""
        doc = self.document
        layer = next((la for la in doc.layers if la.id == self._live_layer), None)
        if layer is None or layer.painted:
            return None
        index = doc.index_of(layer.id)
        if self._live_is_last:
            doc.undo()  # its AddLayer is the newest command: undo it, so replacing leaves no history
        else:
            doc.delete_layer(layer.id)
        return index

    # -- reacting to changes ---------------------------------------------------------------------------
    def _changed(self) -> None:
        """Values or canvas input changed: with live on, schedule a run of the new values."""
        if self.live_enabled and not self._closed:
            self.live.schedule()

    def _build_live(self) -> Request | None:
        """The live scheduler's request of the current values, or None (said in the status bar)."""
        if not self.live_enabled or self._closed:
            return None
        try:
            request, lineage = self.build(live=True)
        except StudioError as exc:
            self.status.emit(str(exc))  # while typing, a half-made value is no reason for a dialog
            return None
        self._lineage[request.request_id] = lineage
        return request

    @Slot(str, object)
    def _on_document_operation(self, what: str, command: Command) -> None:
        if self._adding:
            return
        self._live_is_last = False
        if self._live_layer is not None and _touches(command, self._live_layer, self.document):
            self._live_layer = None  # the person painted on, renamed or moved it: theirs to keep
        if self.mode == "inpaint" or (self.mode == "img2img" and command.kind != "mask"):
            self._changed()

    @Slot(str)
    def _on_document_changed(self, kind: str) -> None:
        if kind == "reset":
            self._live_layer = None
            self._live_is_last = False
            self.set(width=self.document.width, height=self.document.height)

    def set_prompt_history(self, prompts: list[str]) -> None:
        """Replace the prompt history (an opened project): distinct, newest first, at most HISTORY_SIZE."""
        cleaned = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
        self.prompt_history = list(dict.fromkeys(cleaned))[:HISTORY_SIZE]
        self.history_changed.emit()

    def _remember_prompt(self, prompt: str) -> None:
        text = prompt.strip()
        if not text or (self.prompt_history and self.prompt_history[0] == text):
            return
        self.prompt_history = [text] + [p for p in self.prompt_history if p != text][: HISTORY_SIZE - 1]
        self.history_changed.emit()


def _touches(command: Command, layer_id: str, doc: Document) -> bool:
    """True when a command (just applied or reverted) concerns the layer `layer_id`."""
    if getattr(command, "layer_id", None) == layer_id:
        return True
    layer = getattr(command, "layer", None)
    if isinstance(layer, Layer):
        return layer.id == layer_id
    if isinstance(command, MoveLayer):
        moved = {command.old_index, command.new_index}
        return any(0 <= i < len(doc.layers) and doc.layers[i].id == layer_id for i in moved)
    return False


def _panel_fields(recipe: Request) -> dict[str, object]:
    """The fields of a recipe the panels hold (not the images, not the canvas size)."""
    skip = {"init_image", "mask", "width", "height", "request_id"}
    return {name: getattr(recipe, name) for name in recipe.__dataclass_fields__ if name not in skip}


def _layer_name(prompt: str) -> str:
    text = " ".join(prompt.split())
    if not text:
        return "Result"
    return text if len(text) <= LAYER_NAME_CHARS else text[: LAYER_NAME_CHARS - 1] + "…"


def _fit(image: np.ndarray, doc: Document) -> np.ndarray:
    """An RGBA layer of the canvas size holding `image` at the top left (transparent where it is smaller)."""
    rgba = rgb_to_rgba(image)
    if rgba.shape[:2] == (doc.height, doc.width):
        return rgba
    out = blank_pixels(doc.width, doc.height)
    h, w = min(doc.height, rgba.shape[0]), min(doc.width, rgba.shape[1])
    out[:h, :w] = rgba[:h, :w]
    return out
