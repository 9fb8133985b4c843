"""The request model: the panels' values as one frozen `Request`, with a signal per field.

This is the whole API a panel needs:

    model.set(guidance=5.5)                    # a control was edited: one call per edit
    model.field("guidance").connect(show)      # show(5.5) runs when guidance changed, and only then
    model.group("engine", "model").connect(f)  # f(request) once per edit that changed either of them
    model.request                              # the current values (a frozen Request), e.g. to fill
                                               # a control when it is built
    model.set_mode("img2img")                  # "mode" is a field too: model.field("mode")

A control for a new `Request` field needs nothing added here: add the field to `backend.request.Request`,
then in the panel connect the control's edit signal to `model.set(new_field=value)`, connect
`model.field("new_field")` to the control's "show this value" method (it must not echo: show values
without emitting the control's own edit signal), and show `model.request.new_field` once at start.

An edit that leaves every value equal emits nothing. Otherwise the model emits, in this order, the
`field(name)` signal of each changed field, the `group(...)` signals that include one of them, and last
`changed(names)` with the set of changed names: the run controller's cue to re-render with Live on. The
model never calls anything else: it does not know that runs exist.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

from PySide6.QtCore import QObject, Signal, SignalInstance

from backend.errors import RequestError
from backend.prompt_syntax import merge_lora_tags
from backend.request import Request
from studio.prompts import clean_prompt

MODES = ("txt2img", "img2img", "inpaint")
HISTORY_SIZE = 50
TEXT_FIELDS = ("prompt", "negative_prompt", "prompt_b")  # where typed or pasted text enters
_FROM_DOCUMENT = ("init_image", "mask")  # a run's inputs, taken from the canvas when it starts


@functools.cache
def field_names() -> tuple[str, ...]:
    """Every name `field()` accepts: the Request's fields (new ones included) and "mode"."""
    return tuple(f.name for f in dataclasses.fields(Request) if f.name != "request_id") + ("mode",)


class _Watch(QObject):
    """The signal of one field or one group of fields."""

    changed = Signal(object)


class RequestModel(QObject):
    """The panels' values: a frozen Request, the mode and the recent prompts; a signal per field.

    Signals:
      changed(frozenset[str])  after any change, the names that changed ("mode" included)
      history_changed()        `prompt_history` changed
      notice(str)              a short line for the status bar (text cleaned where it was typed)
    Per field and per group of fields: `field(name)` and `group(*names)`.
    """

    changed = Signal(object)
    history_changed = Signal()
    notice = Signal(str)

    def __init__(self, request: Request | None = None, history: Iterable[str] = ()) -> None:
        super().__init__()
        self.request: Request = request if request is not None else Request()
        self.mode = "txt2img"
        self.prompt_history: list[str] = []
        self._names = frozenset(field_names())
        self._fields: dict[str, _Watch] = {}
        self._groups: dict[tuple[str, ...], _Watch] = {}
        self._groups_of: dict[str, list[tuple[str, ...]]] = {}  # field name → the groups holding it
        self.set_prompt_history(list(history), announce=False)

    # -- listening -------------------------------------------------------------------------------------
    def field(self, name: str) -> SignalInstance:
        """The signal emitted with the new value each time field `name` changes (and only then)."""
        self._check([name])
        if name not in self._fields:
            self._fields[name] = _Watch(self)
        return self._fields[name].changed

    def group(self, *names: str) -> SignalInstance:
        """The signal emitted once with the whole request for each edit that changed any of `names`."""
        self._check(names)
        key = tuple(sorted(set(names)))
        if key not in self._groups:
            self._groups[key] = _Watch(self)
            for name in key:
                self._groups_of.setdefault(name, []).append(key)
        return self._groups[key].changed

    def _check(self, names: Iterable[str]) -> None:
        unknown = sorted(set(names) - self._names)
        if unknown:
            raise ValueError(
                f"no such field: {', '.join(unknown)} (fields: {', '.join(sorted(self._names))})"
            )

    # -- changing --------------------------------------------------------------------------------------
    def set(self, **changes: object) -> None:
        """Change fields of the request; equal values change nothing and emit nothing."""
        if any(key in changes for key in _FROM_DOCUMENT):
            raise ValueError("init image and mask come from the document: use set_mode")
        for key in TEXT_FIELDS:
            text = changes.get(key)
            if isinstance(text, str):
                changes[key], note = clean_prompt(text)
                if note:
                    self.notice.emit(note)
        prompt = changes.get("prompt")
        if isinstance(prompt, str) and "<lora:" in prompt.lower():  # A1111 tags become LoRA sliders
            try:
                loras = changes.get("loras", self.request.loras)
                changes["prompt"], changes["loras"] = merge_lora_tags(prompt, loras)  # type: ignore[arg-type]
                self.notice.emit("LoRA tags moved from the prompt to the LoRA sliders (Sliders panel).")
            except RequestError as exc:
                self.notice.emit(str(exc))
        old = self.request
        new = old.replace(**changes)
        if new == old:
            return
        self.request = new
        self._announce(frozenset(k for k in changes if getattr(new, k) != getattr(old, k)))

    def set_mode(self, mode: str) -> None:
        """Choose txt2img, img2img (from the visible canvas) or inpaint (the masked area)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode != self.mode:
            self.mode = mode
            self._announce(frozenset({"mode"}))

    def show_recipe(self, recipe: Request) -> None:
        """Put a recipe's values and mode into the panels (its images stay with the recipe)."""
        self.set(**panel_fields(recipe))
        if recipe.mask is not None:
            self.set_mode("inpaint")
        else:
            self.set_mode("img2img" if recipe.init_image is not None else "txt2img")

    def _announce(self, names: frozenset[str]) -> None:
        ordered = [name for name in field_names() if name in names]
        for name in ordered:
            watch = self._fields.get(name)
            if watch is not None:
                watch.changed.emit(self.mode if name == "mode" else getattr(self.request, name))
        groups = dict.fromkeys(key for name in ordered for key in self._groups_of.get(name, ()))
        for key in groups:
            self._groups[key].changed.emit(self.request)
        self.changed.emit(names)

    # -- recent prompts --------------------------------------------------------------------------------
    def remember_prompt(self, prompt: str) -> None:
        """Put a prompt first in the history (distinct, newest first, at most HISTORY_SIZE)."""
        text = prompt.strip()
        if not text or (self.prompt_history and self.prompt_history[0] == text):
            return
        self.prompt_history = [text] + [p for p in self.prompt_history if p != text][: HISTORY_SIZE - 1]
        self.history_changed.emit()

    def set_prompt_history(self, prompts: list[str], announce: bool = True) -> None:
        """Replace the prompt history (an opened project): distinct, newest first, at most HISTORY_SIZE."""
        cleaned = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
        self.prompt_history = list(dict.fromkeys(cleaned))[:HISTORY_SIZE]
        if announce:
            self.history_changed.emit()


def panel_fields(recipe: Request) -> dict[str, object]:
    """The fields of a recipe the panels hold (not the images, not the canvas size)."""
    skip = {*_FROM_DOCUMENT, "width", "height", "request_id"}
    return {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe) if f.name not in skip}
