"""The Qt binding must not leak or steal references in a long session.

PySide6-Essentials 6.12.0 took a reference from `None` on every void Qt call and from `True` on every
`emit()`: a person dragging sliders for an afternoon hit `Fatal Python error: none_dealloc`. The studio
pins a release without that bug; this test runs a fresh process with nothing patched (no work-around
module exists any more), drives the real main window offscreen far past the point where 6.12.0 aborted
(about 850 slider moves), and checks that the singletons' reference counts come back to where they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MOVES = 20_000
EMITS = 20_000
# Reference counts drift by a handful as caches fill (interned strings, Qt's own tables); 6.12.0 lost one
# per call, so the margin is tiny next to what the bug takes.
MARGIN = 200

CHILD = textwrap.dedent(
    f"""
    import os, sys
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["HF_HUB_OFFLINE"] = "1"
    assert "studio.qt_workarounds" not in sys.modules
    from PySide6.QtWidgets import QApplication
    app = QApplication([])
    from studio.document import Document
    from studio.session import Session
    from studio.settings import Settings
    from ui.main_window import MainWindow
    from fake_engine import FakeEngine

    settings = Settings(sys.argv[1])
    session = Session(engine=FakeEngine(), document=Document(32, 32), settings=settings)
    window = MainWindow(session, settings)
    window.ask_before_closing = False
    window.show()
    app.processEvents()
    slider = window.slider_panel.guidance.slider
    doc = session.document

    def counts():
        return sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)

    while window.slider_panel.reading_references:  # the reference rows are built once, before the baseline
        app.processEvents()
    for i in range(200):  # warm up caches before the baseline
        slider.setValue(i % 1000)
        doc.changed.emit("pixels")
    app.processEvents()
    before = counts()
    for i in range({MOVES}):
        slider.setValue((i * 7) % 1001)  # every move goes through the session and every panel
        if i % 500 == 0:
            app.processEvents()
    for _ in range({EMITS}):
        doc.changed.emit("pixels")
    app.processEvents()
    after = counts()
    print("counts", before, after)
    window.close()
    app.processEvents()
    assert all(abs(a - b) <= {MARGIN} for a, b in zip(before, after)), (before, after)
    print("alive")
    """
)


def test_a_long_session_leaves_none_true_and_false_alone(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "settings.ini")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "alive" in done.stdout, (done.stdout[-800:], done.stderr[-2000:])


def test_the_binding_is_a_release_without_the_refcount_bug():
    import PySide6

    assert PySide6.__version__ != "6.12.0", "PySide6 6.12.0 steals references to None and True"
