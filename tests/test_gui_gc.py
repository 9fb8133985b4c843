"""Reference cycles are collected on the GUI thread only, never on an engine or worker thread."""

from __future__ import annotations

import gc
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from studio.gui_gc import FULL_COLLECTION_EVERY_S


class _Finalised:
    """A cycle that records the thread its finaliser ran on."""

    threads: list[str] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Finalised.threads.append(threading.current_thread().name)


def _allocate_like_an_engine() -> None:
    for _ in range(50):
        junk = [[object()] for _ in range(2000)]  # crosses every generation's threshold many times
        for a in junk:
            a.append(a)


def test_a_busy_worker_thread_never_collects_and_the_gui_thread_does(qtbot, gui_thread_collector):
    _Finalised.threads.clear()
    _Finalised()  # garbage made on the GUI thread, caught in a cycle (as a closed panel's widgets can be)
    worker = threading.Thread(target=_allocate_like_an_engine, name="engine")
    worker.start()
    worker.join()
    assert _Finalised.threads == []  # with Python's own collector this ran on "engine"
    qtbot.waitUntil(lambda: _Finalised.threads != [], timeout=5000)  # the timer's next tick
    assert _Finalised.threads == [threading.main_thread().name]


def test_collect_due_runs_the_generation_python_would(gui_thread_collector):
    gc.collect()
    assert gui_thread_collector.collect_due() is None  # nothing allocated since
    threshold0 = gc.get_threshold()[0]
    kept = [[] for _ in range(threshold0 + 10)]
    assert gui_thread_collector.collect_due() == 0
    assert gc.get_count()[0] < threshold0
    del kept


def test_full_collections_wait_their_turn(gui_thread_collector, monkeypatch):
    collected: list[int] = []
    monkeypatch.setattr(gc, "get_count", lambda: (0, 0, gc.get_threshold()[2] + 1))  # gen 2 is due
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)
    monkeypatch.setattr(gui_thread_collector, "_last_full", time.monotonic())
    assert gui_thread_collector.collect_due() == 1  # a full pass ran less than a minute ago: a young one
    monkeypatch.setattr(gui_thread_collector, "_last_full", time.monotonic() - FULL_COLLECTION_EVERY_S - 1)
    assert gui_thread_collector.collect_due() == 2
    assert collected == [1, 2]
    assert gui_thread_collector.collect_due() == 1  # and the next waits again


def test_the_app_runs_with_the_collector_and_freezes_what_start_up_made():
    # A fresh process: the real `studio` entry point, its window and warm-up import, then the state of gc.
    code = textwrap.dedent(
        """
        import gc, sys
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        import ui.app as app

        def check():
            print(gc.isenabled(), gc.get_freeze_count() > 10000, "torch" in sys.modules)
            QApplication.instance().quit()

        def wait_for_warm_up():
            if "backend.patch_engine" in sys.modules and gc.get_freeze_count() > 100000:
                QTimer.singleShot(0, check)
            else:
                QTimer.singleShot(50, wait_for_warm_up)

        QTimer.singleShot(0, wait_for_warm_up)
        sys.exit(app.main(["--settings", sys.argv[1]]))
        """
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code, f"{tmp}/s.ini"], capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"], proc.stdout + proc.stderr
