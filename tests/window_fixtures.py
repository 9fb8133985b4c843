"""Fixture for window tests: a real MainWindow on a fake engine, shown and active, closed afterwards."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_window(qtbot, tmp_path):
    """Build a window on a fake engine; closed (and its engine thread joined) after the test."""
    # Imported here: backend-only test runs need not load the widgets.
    from PySide6.QtWidgets import QApplication

    from studio.document import Document
    from studio.session import Session
    from studio.settings import Settings
    from ui.main_window import MainWindow

    windows: list[MainWindow] = []

    def make(engine, size: int = 64) -> MainWindow:  # noqa: ANN001 - an engine (usually a FakeEngine)
        settings = Settings(str(tmp_path / "settings.ini"))
        session = Session(engine=engine, document=Document(size, size), settings=settings)
        window = MainWindow(session, settings)
        qtbot.addWidget(window)
        window.show()
        window.activateWindow()
        # Shortcuts (Ctrl+Enter, Esc, Ctrl+Z) go to the active window.
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
        assert not window.session.host.is_alive()
