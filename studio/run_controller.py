"""The run controller: runs the request model's values on the engine and puts results on the document.

It owns everything about runs: Generate and Cancel, Live re-rendering (coalescing a drag into a few
runs), the seed policy (a fresh seed per Generate unless locked), lineage (which results and images a
run started from), and the live result layer that the next live result replaces. It reads and sets the
request model; the model never calls it (it only emits signals the controller listens to).

The path of one slider move with Live on, to a painted frame (five files):

1. `ui/slider_panel.py`: the QSlider's valueChanged reaches `ValueSlider._slid`, which emits `moved(value)`
   to `model.set(locality=value)`.
2. `studio/request_model.py`: `RequestModel.set` replaces the frozen request and emits only the changed
   field's signal (the locality slider and its label redraw, nothing else), then `changed({"locality"})`.
3. `studio/run_controller.py` (here): `_values_changed` asks the `LivePolicy` whether to run now (idle
   engine, or the running request has shown a frame) or mark the values dirty for later; to run, `_run`
   builds the request from the model and the document and calls `host.submit(request)`.
4. `studio/engine_host.py`: `submit` puts the request in a one-slot mailbox and sets the running
   request's cancel Event; the engine thread takes it and iterates `engine.generate(request, cancel)`
   (the engine, behind the protocol of `backend/engine.py`); each StepEvent becomes the one pending frame,
   delivered to the GUI thread by a queued signal as `host.step`.
5. back here, `_on_step` drops frames of stale runs and emits `frame(ev)`, connected straight to
   `ui/canvas.py`'s `CanvasView.set_preview`, which makes a QImage of the array and repaints. A waiting
   change is submitted after that frame (`LivePolicy.frame`); `host.done` becomes a layer and a gallery
   entry (`_on_done`), `host.idle` submits the last values of a drag (`LivePolicy.idle`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from backend.errors import RequestError, StudioError
from backend.events import Done, StepEvent
from backend.images import Picture
from backend.request import Request
from studio.commands import Command, MoveLayer
from studio.document import Document
from studio.engine_host import EngineHost
from studio.gallery import Gallery, Result
from studio.layers import Layer, blank_pixels, new_id, rgb_to_rgba
from studio.request_model import RequestModel

log = logging.getLogger(__name__)

LAYER_NAME_CHARS = 40
NOTHING_TO_CHANGE = (
    "Strength is 0, so this run would give back the canvas unchanged: raise Strength to let it change "
    "the picture (1 repaints it entirely)."
)
SEED_RANGE = 2**32  # a fresh seed: any 32-bit value, which every engine's generator takes


@dataclass(frozen=True)
class Lineage:
    """Where a run's input came from, fixed when the run is submitted."""

    parents: tuple[str, ...] = ()
    painted: bool = False
    live: bool = False


class LivePolicy:
    """When a stream of changes runs (pure state, no Qt): leading edge, then once per shown frame.

    A change made while the engine is idle runs at once. While a run is in progress a change only marks
    the values dirty; once that run has shown `min_frames` frames, or has ended, the newest values run
    (trailing edge, so the final values always run). Every run shows a frame before it is superseded, and
    a burst of changes starts only a few runs. Requests are built only when they are about to run, so a
    burst builds few of them (an img2img request copies the whole canvas).
    """

    def __init__(self, min_frames: int = 1) -> None:
        self.min_frames = min_frames
        self.dirty = False  # the values changed since the newest submission
        self._last_id: str | None = None  # the newest request submitted
        self._frames = 0  # frames seen of that request
        # Busy as the GUI thread has seen it: from a submission until the host's idle signal arrives. The
        # engine thread may already be done, but judging by what was delivered keeps a burst coalesced.
        self._in_flight = False

    def change(self) -> bool:
        """The values changed: True when they should run now, else they wait (dirty)."""
        run = not self._in_flight or self._frames >= self.min_frames
        self.dirty = not run
        return run

    def submitted(self, request_id: str) -> None:
        """A request was submitted: it covers every change so far."""
        self.dirty = False
        self._last_id = request_id
        self._frames = 0
        self._in_flight = True

    def frame(self, request_id: str) -> bool:
        """A frame arrived: True when waiting values should run now."""
        if request_id == self._last_id:
            self._frames += 1
        return self.dirty and self._frames >= self.min_frames

    def idle(self) -> bool:
        """The engine has nothing to do: True when waiting values should run now."""
        self._in_flight = False
        return self.dirty


class RunController(QObject):
    """Runs the model's values: Generate, Cancel, Live, seed policy, lineage, results on the document.

    Signals:
      running_changed(bool)      a run of this controller started or ended
      submitted(Request)         a request went to the engine host (every submission, live ones too)
      run_started(Request)       the engine began the current run
      frame(StepEvent)           a preview frame of the current run (stale runs' frames are dropped)
      progress(int, int, float)  step, total steps, seconds per step of the current run
      result_added(Result)       a run finished: its layer is on the document, its entry in the gallery
      run_ended(str)             "done", "cancelled" or "failed"
      error(str)                 something went wrong; the message says what to do
      status(str)                a short line for the status bar
      live_changed(bool)         Live switched on or off
      seed_lock_changed(bool)    the seed lock switched on or off
    """

    running_changed = Signal(bool)
    submitted = Signal(object)
    run_started = Signal(object)
    frame = Signal(object)
    progress = Signal(int, int, float)
    result_added = Signal(object)
    run_ended = Signal(str)
    error = Signal(str)
    status = Signal(str)
    live_changed = Signal(bool)
    seed_lock_changed = Signal(bool)

    def __init__(
        self,
        model: RequestModel,
        document: Document,
        gallery: Gallery,
        host: EngineHost,
        min_frames: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.document = document
        self.gallery = gallery
        self.host = host
        self.live = LivePolicy(min_frames)
        self.live_enabled = False
        self.seed_locked = False
        self.current: Request | None = None  # the newest run submitted and not yet ended
        self.last_frame: StepEvent | None = None  # newest frame of the current run
        self.restored: Result | None = None  # the gallery entry whose recipe the panels hold
        self.submitted_count = 0  # runs asked for, for tests and statistics
        self._lineage: dict[str, Lineage] = {}  # request id → lineage, for the newest run
        # request id → what puts a job's result in place (a grid, an upscale, an expansion: studio/jobs.py)
        self._placers: dict[str, Callable[[Done, Lineage], Result]] = {}
        # The layer of the last live result while the next live result may replace it, and whether its
        # AddLayer is still the newest command (then replacing it leaves no trace in the undo history).
        self._live_layer: str | None = None
        self._live_is_last = False
        self._adding = False  # this controller is changing the document
        self._setting = False  # this controller is changing the model: not a change to re-render
        self._closed = False
        host.started.connect(self._on_started)
        host.step.connect(self._on_step)
        host.done.connect(self._on_done)
        host.cancelled.connect(self._on_cancelled)
        host.failed.connect(self._on_failed)
        host.idle.connect(self._on_idle)
        model.changed.connect(self._values_changed)
        document.operation.connect(self._on_document_operation)
        document.changed.connect(self._on_document_changed)

    # -- actions ---------------------------------------------------------------------------------------
    def generate(self) -> Request | None:
        """Run the current values now (a fresh seed unless locked); None after reporting bad input."""
        if not self.seed_locked:
            self._set_model(seed=random.randrange(SEED_RANGE))
        try:
            request, lineage = self.build()
        except StudioError as exc:
            self.error.emit(str(exc))
            return None
        self.model.remember_prompt(request.prompt)
        self._submit(request, lineage)
        return request

    def submit_job(
        self, request: Request, lineage: Lineage, place: Callable[[Done, Lineage], Result]
    ) -> None:
        """Run a request whose result is not simply a new layer (a grid, an upscale, an expansion):
        `place` puts it on the document and in the gallery when it is done, and returns its gallery entry."""
        self._submit(request.validate(), lineage)
        self._placers = {request.request_id: place}

    def cancel(self) -> None:
        """Stop the current run (no result) and drop changes waiting to run live."""
        self.live.dirty = False
        self.host.cancel()

    def set_live(self, on: bool) -> None:
        """Switch live re-rendering on or off; switching it on renders the current values."""
        on = bool(on)
        if on == self.live_enabled:
            return
        self.live_enabled = on
        self.live_changed.emit(on)
        if on:
            self._values_changed(frozenset())
        else:
            self.live.dirty = False

    def set_seed_locked(self, on: bool) -> None:
        """Keep the seed on Generate (on), or roll a fresh one for every Generate (off)."""
        on = bool(on)
        if on != self.seed_locked:
            self.seed_locked = on
            self.seed_lock_changed.emit(on)

    def restore(self, result: Result | str) -> None:
        """Put a result's recipe back into the panels and lock its seed, so Generate makes it again."""
        found = self.gallery.get(result) if isinstance(result, str) else result
        if found is None:
            self.error.emit("That result is no longer in the gallery.")
            return
        self.restored = found  # set first, so live runs of the restored values count it as a parent
        self.model.show_recipe(found.request)
        self.set_seed_locked(True)

    def use_as_init(self, result: Result | str) -> Layer | None:
        """Put a result back on the canvas as a new layer and switch to img2img from the canvas."""
        found = self.gallery.get(result) if isinstance(result, str) else result
        if found is None:
            self.error.emit("That result is no longer in the gallery.")
            return None
        doc = self.document
        name = f"Init: {layer_name(found.request.prompt)}"
        layer = doc.add_layer(name, fit_to_document(found.image, doc), source=found.id)
        self.model.set_mode("img2img")
        return layer

    @property
    def running(self) -> bool:
        """True from a submission until its run ends."""
        return self.current is not None

    @property
    def pending(self) -> bool:
        """True when changed values wait for the run in progress to show a frame."""
        return self.live.dirty

    def build(self, live: bool = False) -> tuple[Request, Lineage]:
        """The request a run would use now, completed from the document, and its lineage.

        Raises a StudioError (RequestError) with a readable message for bad input.
        """
        doc = self.document
        mode = self.model.mode
        changes: dict[str, object] = {
            "width": doc.width,
            "height": doc.height,
            "init_image": None,
            "mask": None,
        }
        parents: list[str] = []
        painted = False
        if mode != "txt2img":
            if self.model.request.strength <= 0:
                raise RequestError(NOTHING_TO_CHANGE)
            # A live result that the next live run replaces is not part of that run's input.
            layers = [la for la in doc.layers if not (live and la.id == self._live_layer)]
            init = Picture(doc.composite_of(layers))  # the canvas's cached picture under a live result
            changes["init_image"] = init
            sources = [la for la in layers if la.visible and la.opacity > 0 and la.source]
            parents = [la.source for la in sources if la.source]
            painted = any(la.painted for la in sources)
            if not parents:
                parents = [f"image:{init.digest[:16]}"]
            if mode == "inpaint":
                if not doc.mask.any():
                    raise RequestError("Paint a mask over the area to repaint first (the mask brush).")
                changes["mask"] = Picture(doc.mask)
        request = self.model.request.replace(**changes).validate()
        if self.restored is not None and request.seed == self.restored.request.seed:
            parents.append(self.restored.id)
        return request, Lineage(tuple(dict.fromkeys(parents)), painted, live)

    def close(self) -> None:
        """Stop reacting: no more runs, results or frames (the window is closing)."""
        self._closed = True
        self.live.dirty = False

    # -- live ------------------------------------------------------------------------------------------
    @Slot(object)
    def _values_changed(self, names: frozenset[str]) -> None:
        if (
            "seed" in names
            and self.restored is not None
            and self.model.request.seed != self.restored.request.seed
        ):
            self.restored = None  # a new seed is a new picture, no longer a variation of the restored one
        if self._setting or not self.live_enabled or self._closed:
            return
        if self.live.change():
            self._run_live()

    def _run_live(self) -> None:
        if not self.live_enabled or self._closed:
            return
        try:
            request, lineage = self.build(live=True)
        except StudioError as exc:
            self.live.dirty = False
            self.status.emit(str(exc))  # while typing, a half-made value is no reason for a dialog
            return
        self._submit(request, lineage)

    def _set_model(self, **changes: object) -> None:
        """Change the model without taking it for a person's edit (no live run of its own)."""
        self._setting = True
        try:
            self.model.set(**changes)
        finally:
            self._setting = False

    def _submit(self, request: Request, lineage: Lineage) -> None:
        self.last_frame = None
        self._lineage = {request.request_id: lineage}  # only the newest run can still add a result
        self._placers.clear()
        was_running = self.current is not None
        self.current = request
        self.live.submitted(request.request_id)
        self.submitted_count += 1
        self.host.submit(request)
        self.submitted.emit(request)
        if not was_running:
            self.running_changed.emit(True)

    # -- engine events (GUI thread) --------------------------------------------------------------------
    def _is_current(self, request_id: str) -> bool:
        return not self._closed and self.current is not None and self.current.request_id == request_id

    @Slot(object)
    def _on_started(self, request: Request) -> None:
        if self._is_current(request.request_id):
            self.run_started.emit(request)
            self.status.emit(f"Generating {request.width}×{request.height}, {request.steps} steps…")

    @Slot(object)
    def _on_step(self, ev: StepEvent) -> None:
        if self._is_current(ev.request_id):  # a frame of a superseded run is never painted
            self.last_frame = ev
            if ev.preview is not None:
                self.frame.emit(ev)  # painted before a waiting change supersedes this run
            self.progress.emit(ev.step, ev.total, ev.elapsed_s / max(ev.step, 1))
        if self.live.frame(ev.request_id):
            self._run_live()

    @Slot()
    def _on_idle(self) -> None:
        if self.live.idle():
            self._run_live()

    @Slot(object)
    def _on_done(self, done: Done) -> None:
        if not self._is_current(done.request_id):
            return
        lineage = self._lineage.get(done.request_id, Lineage())
        place = self._placers.pop(done.request_id, self._add_result)
        self._end()
        try:
            self._adding = True  # whatever the placement changes on the document is not a person's edit
            try:
                result = place(done, lineage)
            finally:
                self._adding = False
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

    # -- results on the document -----------------------------------------------------------------------
    def _add_result(self, done: Done, lineage: Lineage) -> Result:
        """The finished image as a new layer (undoable) and a gallery entry with recipe and lineage."""
        result_id = new_id()
        doc = self.document
        active = doc.active_id
        self._adding = True
        try:
            # A result lands where its preview was shown: on top of every layer, so it is seen. A live
            # result that replaces the previous one takes its place, which only live results moved.
            index = self._take_back_live_layer() if lineage.live else None
            layer = doc.add_layer(
                layer_name(done.request.prompt),
                pixels=fit_to_document(done.image, doc),
                index=len(doc.layers) if index is None else index,
                source=result_id,
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
        self.model.remember_prompt(done.request.prompt)
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

    @Slot(str, object)
    def _on_document_operation(self, _what: str, command: Command) -> None:
        if self._adding:
            return
        self._live_is_last = False
        if self._live_layer is not None and _touches(command, self._live_layer, self.document):
            self._live_layer = None  # the person painted on, renamed or moved it: theirs to keep
        mode = self.model.mode
        if mode == "inpaint" or (mode == "img2img" and command.kind != "mask"):
            self._values_changed(frozenset())  # the canvas is this run's input

    @Slot(str)
    def _on_document_changed(self, kind: str) -> None:
        if kind == "reset":
            self._live_layer = None
            self._live_is_last = False
        if kind in ("reset", "canvas"):  # a new document, or the canvas size changed (studio/canvas_ops.py)
            self.model.set(width=self.document.width, height=self.document.height)


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


def layer_name(prompt: str) -> str:
    """A result layer's name: its prompt on one line, shortened."""
    text = " ".join(prompt.split())
    if not text:
        return "Result"
    return text if len(text) <= LAYER_NAME_CHARS else text[: LAYER_NAME_CHARS - 1] + "…"


def fit_to_document(image: np.ndarray, doc: Document) -> np.ndarray:
    """An RGBA layer of the canvas size holding `image` at the top left (transparent where it is smaller)."""
    rgba = rgb_to_rgba(image)
    if rgba.shape[:2] == (doc.height, doc.width):
        return rgba
    out = blank_pixels(doc.width, doc.height)
    h, w = min(doc.height, rgba.shape[0]), min(doc.width, rgba.shape[1])
    out[:h, :w] = rgba[:h, :w]
    return out
