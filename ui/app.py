"""`studio`: open the window. `studio --demo OUT.png`: one generation, a screenshot, one line of numbers."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import QApplication

from studio.document import Document
from studio.gui_gc import GuiThreadCollector
from studio.session import Session
from studio.settings import Settings
from ui.main_window import MainWindow

log = logging.getLogger(__name__)
# A fresh install's first run: the patch engine at 256², 12 steps (its own default is 20). bench/DEMO.md
# (bench/bench_demo.py) times that first image at 128² and 256² on the machine it ran on.
DEFAULT_CANVAS = (256, 256)
DEFAULT_STEPS = 12  # a fresh install's first runs; later runs start from the person's last settings
DEMO_PROMPT = "hammered gold"


class StallMeter(QObject):
    """How long the GUI event loop went without running a 5 ms timer: every gap beyond the interval while
    measuring (`gaps`, seconds), and the longest of them (how long the window froze)."""

    def __init__(self, interval_ms: int = 5) -> None:
        super().__init__()
        self.gaps: list[float] = []
        self.interval_s = interval_ms / 1000
        self._last = time.perf_counter()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        """Start measuring from now, forgetting earlier gaps."""
        self.gaps.clear()
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        """Stop measuring."""
        self._timer.stop()

    @Slot()
    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(max(0.0, now - self._last - self.interval_s))
        self._last = now

    @property
    def max_gap_s(self) -> float:
        """The longest gap, in seconds."""
        return max(self.gaps, default=0.0)

    @property
    def max_stall_ms(self) -> int:
        """The longest stall beyond the timer's own interval, in milliseconds."""
        return round(self.max_gap_s * 1000)

    def over(self, limit_s: float) -> int:
        """How many gaps were longer than `limit_s`."""
        return sum(1 for g in self.gaps if g > limit_s)


class AfterFirstPaint(QObject):
    """Starts the window's background work once the person can see the window: the engine import (torch
    holds the GIL for long stretches while it loads) and model discovery (walks folders and the hub cache).

    Started before the window was built, the import delayed the first paint (bench/GUI.md, "launch → first
    paint", measured both ways by bench/bench_gui.py).
    `painted` is emitted after the first paint, with the work started; `painted_at` is its perf_counter;
    `warmed` once the engine import has finished (or failed).
    """

    painted = Signal()
    warmed = Signal()

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.warm: threading.Thread | None = None
        self.painted_at: float | None = None
        window.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """Notice the window's first paint; start the work once that paint is on the screen."""
        if event.type() == QEvent.Type.Paint and self.painted_at is None:
            self.painted_at = time.perf_counter()
            QTimer.singleShot(0, self._start)
        return False

    @Slot()
    def _start(self) -> None:
        self.window.removeEventFilter(self)
        self.warm = warm_up_engine(self.warmed.emit)
        self.window.engine_picker.start_discovery()
        self.painted.emit()


class Demo(QObject):
    """Runs one generation in the real window, then saves a screenshot and prints the numbers."""

    def __init__(self, window: MainWindow, out: str, launch: AfterFirstPaint | None = None) -> None:
        super().__init__()
        self.window = window
        self.launch = launch
        self.out = out
        self.steps = 0
        self.exit_code = 1
        self.captured = False  # a failed run reports both `error` and `run_ended`: capture once
        self.meter = StallMeter()
        runs = window.session.runs
        runs.result_added.connect(self._finished)
        runs.run_ended.connect(self._ended)
        runs.error.connect(self._failed)

    def start(self) -> None:
        """Generate with the window's default settings, once the engine warm-up import has finished."""
        warm = self.launch.warm if self.launch is not None else None
        if self.launch is not None and (warm is None or warm.is_alive()):
            QTimer.singleShot(50, self.start)  # as a person would: the window is up, typing takes longer
            return
        self.meter.start()
        session = self.window.session
        if not session.model.request.prompt:
            session.model.set(prompt=DEMO_PROMPT)
        session.runs.set_seed_locked(True)  # the demo runs the stored seed: the same picture every time
        # Its line claims every step's preview was painted: the engine waits for each frame to reach the
        # canvas (which paints every frame it gets), so a busy machine slows the run, not the count.
        session.host.keep_every_frame = True
        request = session.runs.generate()
        self.steps = request.steps if request is not None else 0

    @Slot(object)
    def _finished(self, result) -> None:  # noqa: ANN001
        self.steps = result.request.steps
        self.exit_code = 0

    @Slot(str)
    def _ended(self, how: str) -> None:
        # Let the result layer and the gallery entry paint before the screenshot.
        QTimer.singleShot(100, self._capture)

    @Slot(str)
    def _failed(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        if not self.window.session.runs.running:
            QTimer.singleShot(0, self._capture)

    @Slot()
    def _capture(self) -> None:
        if self.captured:
            return
        self.captured = True
        self.meter.stop()
        if not self.window.grab().save(self.out):
            print(f"error: could not write {self.out}", file=sys.stderr)
            self.exit_code = 1
        frames = self.window.canvas.frames_painted
        print(f"frames={frames} steps={self.steps} max_stall_ms={self.meter.max_stall_ms}", flush=True)
        self.window.ask_before_closing = False
        self.window.close()
        QApplication.instance().exit(self.exit_code)


def limit_torch_threads() -> None:
    """Leave one core to the GUI thread: on a 2-core CPU torch's spinning workers otherwise starve it.

    bench/DEMO.md (bench/bench_demo.py) runs the first image with this choice and with two threads on
    the same machine: the longest GUI stall and the wall time of each.
    Must run before torch is imported (it reads OMP_NUM_THREADS once); a value already set wins.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))


def warm_up_engine(done: Callable[[], None] | None = None) -> threading.Thread:
    """Import the default engine (and torch) in the background, so the first Generate does not stall.

    Importing torch holds the GIL for long stretches; done inside the first run, it froze the window
    while torch loaded. A daemon thread: it only imports, and a quit during the import must not wait on it.
    `done` is called on that thread when the import has finished or failed.
    """
    worker = threading.Thread(target=_import_engine, args=(done,), name="studio-warm-up", daemon=True)
    worker.start()
    return worker


def _import_engine(done: Callable[[], None] | None) -> None:
    try:
        importlib.import_module("backend.patch_engine")
    except Exception:  # the first run reports a broken install properly; a warm-up never does
        log.debug("engine warm-up failed", exc_info=True)
    if done is not None:
        done()


def build_window(
    settings: Settings, size: tuple[int, int] = DEFAULT_CANVAS, steps: int | None = None
) -> MainWindow:
    """The window on a fresh session with a canvas of `size`."""
    first_run = settings.last_request is None
    session = Session(document=Document(*size), settings=settings)
    if steps is None and first_run:
        steps = DEFAULT_STEPS
    if steps is not None:
        session.model.set(steps=steps)
    return MainWindow(session, settings)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `studio` command."""
    parser = argparse.ArgumentParser(prog="studio", description="Paint, sketch and steer a diffusion model.")
    parser.add_argument(
        "--demo", metavar="OUT.png", help="run one generation, save a screenshot, print stats"
    )
    parser.add_argument("--settings", metavar="FILE.ini", help="keep preferences in this file instead")
    parser.add_argument("--size", type=int, help=f"canvas side in pixels (default {DEFAULT_CANVAS[0]})")
    parser.add_argument("--steps", type=int, help="denoising steps to start with")
    parser.add_argument("file", nargs="?", help="a project (.studio, .ora) or an image to open")
    args = parser.parse_args(argv)
    limit_torch_threads()
    if args.demo and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # a headless machine: the demo still runs
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("Studio")
    app.setApplicationName("Studio")
    if args.settings:
        settings = Settings(args.settings)
    elif args.demo:  # the demo runs the defaults and leaves the person's preferences alone
        scratch = tempfile.TemporaryDirectory()
        settings = Settings(str(Path(scratch.name) / "demo.ini"))
    else:
        settings = Settings()
    collector = GuiThreadCollector(parent=app)  # no engine or worker thread ever finalises Qt objects
    collector.start()
    size = (args.size, args.size) if args.size else DEFAULT_CANVAS
    window = build_window(settings, size, args.steps)
    launch = AfterFirstPaint(window)
    collector.freeze()
    launch.warmed.connect(collector.freeze)  # torch and the engine: loaded once, kept for the session
    window.show()
    if args.file:
        window.open_path(args.file)
    if args.demo:
        demo = Demo(window, args.demo, launch)
        QTimer.singleShot(0, demo.start)
        code = app.exec()
        return code if code else demo.exit_code
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
