"""Test set-up: offscreen Qt, offline hub, one torch thread, no test leaving a thread running."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# One torch thread (read when torch is first imported, and inherited by subprocesses): the tests' models
# are tiny, and on a busy 2-core machine two threads' spinning OpenMP workers made them about 10× slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from studio.gui_gc import GuiThreadCollector  # noqa: E402

# Tiny diffusers models and engines (tests/fixtures_diffusers.py); sessions (tests/session_fixtures.py);
# windows (tests/window_fixtures.py); the limited child that opens hostile files (tests/hostile_child.py).
pytest_plugins = ["fixtures_diffusers", "session_fixtures", "window_fixtures", "hostile_child"]


@pytest.fixture(scope="session", autouse=True)
def gui_thread_collector(qapp):
    """As in the app: only the main thread collects reference cycles, so no engine, saver or server
    thread of a test ever finalises a window's Qt objects (studio/gui_gc.py)."""
    collector = GuiThreadCollector()
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(autouse=True)
def collect_after_each_test(gui_thread_collector):
    """Tests that never run the event loop still have their cycles collected, between tests."""
    yield
    gui_thread_collector.collect_due()


@pytest.fixture(autouse=True)
def no_leftover_threads():
    """Fail a test that leaves a thread of its own running."""
    before = set(threading.enumerate())
    yield
    left = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and not t.name.startswith(("pydevd", "Dummy"))
    ]
    for t in left:
        t.join(timeout=5)
    left = [t for t in left if t.is_alive()]
    assert not left, f"threads left running: {[t.name for t in left]}"
