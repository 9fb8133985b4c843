"""A scriptable engine for tests where the engine is not what is under test.

It follows the engine protocol: `steps` StepEvents (each with a preview frame), then one Done, unless the
run is cancelled. Its image is a pure function of the request, so "the final image equals a fresh run with
the final values" can be checked. Tests script it:

- `raise_at=k, error=exc`: raise `exc` when step k is about to be yielded (k = 1 raises before any frame);
- `gates=[e1, e2, ...]`: before step i, wait until `gates[i-1]` is set (cancel still stops the wait), so
  a test decides when each step happens, with no sleeps;
- `hold=e`: before the first step, wait until `e` is set, deaf to cancel (a long step that looks at cancel
  only when it ends, like one UNet step on a CPU), so the engine thread is busy for as long as a test wants;
- `started_runs`, `finished_runs`, `running` record what the engine did, on the engine thread.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.events import Done, Event, StepEvent
from backend.request import Request


def fake_image(request: Request) -> np.ndarray:
    """The fake engine's final image for a request: H×W×3 uint8, a function of the recipe alone.

    txt2img: a colour from the recipe plus a gradient. img2img: the init image blended towards that colour
    by the strength. Inpaint: the same, only where the mask is set; other pixels keep the init exactly.
    """
    key = repr(
        (
            request.prompt,
            request.negative_prompt,
            request.seed,
            request.guidance,
            request.variation_seed,
            round(request.variation_strength, 6),
            request.prompt_b,
            round(request.blend, 6),
            round(request.locality, 6),
            request.concepts,
            request.reference_weights,
        )
    )
    colour = np.frombuffer(hashlib.sha256(key.encode()).digest()[:3], dtype=np.uint8).astype(np.float32)
    h, w = request.height, request.width
    ramp = np.linspace(0.0, 60.0, w, dtype=np.float32)[None, :, None]
    art = np.clip(colour[None, None, :] * 0.75 + ramp, 0, 255)
    art = np.broadcast_to(art, (h, w, 3))
    if request.init_image is None:
        return np.ascontiguousarray(art.astype(np.uint8))
    init = request.init_image.pixels.astype(np.float32)
    out = init * (1.0 - request.strength) + art * request.strength
    if request.mask is not None:
        keep = request.mask.pixels < 128
        out[keep] = init[keep]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class FakeEngine:
    """An engine whose steps, failures and pacing a test controls."""

    def __init__(
        self,
        steps: int | None = None,
        raise_at: int | None = None,
        error: BaseException | None = None,
        gates: Sequence[threading.Event] | None = None,
        hold: threading.Event | None = None,
    ) -> None:
        self.steps = steps  # None: the request's own step count
        self.raise_at = raise_at
        self.error = error if error is not None else RuntimeError("fake engine failure")
        self.gates = list(gates) if gates is not None else []
        self.hold = hold
        self.started_runs: list[Request] = []
        self.finished_runs: list[Request] = []
        self.running = threading.Event()  # set while a run is inside generate
        self.step_reached = threading.Condition()
        self.last_step = 0

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """Validate, then yield one frame per step and a Done, unless cancelled or scripted to raise."""
        request.validate()
        return self._run(request, cancel)

    def _run(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        self.started_runs.append(request)
        self.running.set()
        try:
            total = self.steps or request.steps
            image = fake_image(request)
            t0 = time.perf_counter()
            if self.hold is not None:
                self.hold.wait()
            for i in range(1, total + 1):
                if i <= len(self.gates) and not _wait(self.gates[i - 1], cancel):
                    return
                if cancel.is_set():
                    return
                if self.raise_at == i:
                    raise self.error
                preview = (image.astype(np.uint16) * i // total).astype(np.uint8)
                with self.step_reached:
                    self.last_step = i
                    self.step_reached.notify_all()
                yield StepEvent(request.request_id, i, total, preview, time.perf_counter() - t0)
            if cancel.is_set():
                return  # cancel is checked before the "decode": no Done
            self.finished_runs.append(request)
            yield Done(request.request_id, image, request, {"engine": "fake"}, None, time.perf_counter() - t0)
        finally:
            self.running.clear()


def _wait(gate: threading.Event, cancel: threading.Event) -> bool:
    """Wait for `gate`; False if the run was cancelled first."""
    while not gate.wait(0.005):
        if cancel.is_set():
            return False
    return True


class Paced:
    """Wraps a real engine so that each step waits until the test has taken the previous frame.

    The host keeps at most one frame pending, so a fast engine may outrun the GUI thread; a test that
    checks every step's frame releases `taken` from its frame handler to let the next step run.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.taken = threading.Semaphore(0)

    def generate(self, request: Request, cancel: threading.Event) -> Iterator[Event]:
        """The wrapped engine's events, pausing after each StepEvent until `taken` is released."""
        events = self.engine.generate(request, cancel)
        try:
            for ev in events:
                yield ev
                if isinstance(ev, StepEvent):
                    while not self.taken.acquire(timeout=0.005):
                        if cancel.is_set():
                            return
        finally:
            events.close()


def make_references(folder: Path, count: int = 3, side: int = 32) -> Path:
    """A tiny reference folder for the patch engine: `count` distinct seeded textures."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(count):
        img = rng.random((side, side, 3), dtype=np.float32) * 96
        img[..., i % 3] += ramp[None, :] * 0.6
        img[..., (i + 1) % 3] += ramp[:, None] * 0.3
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"texture{i}.png")
    return folder
