"""Save runs on a worker thread: the window stays usable, the file is atomic and holds the snapshot, and
what the person does during the save stays unsaved and survives a crash."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_engine import FakeEngine
from PySide6.QtWidgets import QMainWindow

from studio.document import Document
from studio.files.journal import find_recovery, recover
from studio.files.project import load_project, project_data
from studio.session import Session
from studio.settings import Settings
from ui.project_actions import ProjectActions


class Window(QMainWindow):
    """What ProjectActions needs of the main window: a title, settings, an error slot."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.errors: list[str] = []

    def show_error(self, message: str) -> None:
        self.errors.append(message)


@pytest.fixture
def make(qtbot, tmp_path):
    sessions: list[Session] = []

    def build(size: int = 256) -> tuple[Window, Session, ProjectActions]:
        window = Window(Settings(str(tmp_path / "settings.ini")))
        qtbot.addWidget(window)
        session = Session(FakeEngine(), document=Document(size, size))
        sessions.append(session)
        return window, session, ProjectActions(window, session, window.menuBar().addMenu("File"))

    yield build
    for session in sessions:
        assert session.shutdown(timeout=5)


def paint(doc: Document, value: int, at: int = 0) -> None:
    doc.paint(doc.layers[0].id, at, at, np.full((16, 16, 4), value, np.uint8))


def test_the_snapshot_shares_layer_pixels_instead_of_copying_them():
    doc = Document(512, 512)
    doc.add_layer("ink")
    data = project_data(doc)
    assert all(a.pixels is b.pixels for a, b in zip(data.layers, doc.layers, strict=True))
    paint(doc, 9)  # the document copies on write; the snapshot keeps what was there
    assert (data.layers[0].pixels == 255).all() and (doc.layers[0].pixels[:16, :16] == 9).all()


def test_save_runs_on_a_worker_and_work_done_meanwhile_stays_unsaved(make, qtbot, tmp_path):
    window, session, actions = make()
    doc = session.document
    paint(doc, 10)
    path = tmp_path / "pic.studio"
    ran_on: list[str] = []
    original = actions.saver._run
    actions.saver._run = lambda job: (ran_on.append(threading.current_thread().name), original(job))
    with qtbot.waitSignal(actions.saver.finished, timeout=30_000):
        assert actions.start_save(path)
        paint(doc, 20, at=100)  # the person keeps painting while the file is written
    assert ran_on == ["studio-save"]
    assert window.windowTitle() == "pic.studio* — Studio"  # the second stroke is not in the file
    saved = load_project(path)
    assert (saved.layers[0].pixels[:16, :16] == 10).all() and (saved.layers[0].pixels[100, 100] == 255).all()
    doc.undo()
    assert doc.is_clean and window.windowTitle() == "pic.studio — Studio"
    assert not window.errors


def test_a_crash_right_after_a_background_save_loses_nothing(make, qtbot, tmp_path):
    """The file is written but the window never hears of it: the journal replays what followed."""
    _, session, actions = make()
    doc = session.document
    path = tmp_path / "pic.studio"
    assert actions.save_to(path)  # the journal now builds on this file
    paint(doc, 10)
    actions.start_save(path)
    paint(doc, 20, at=50)  # after the snapshot
    actions.saver.join()  # the file is replaced...
    actions.journal.abandon()  # ...and the process dies before the GUI thread handles it
    assert load_project(path).save_id != ""
    found = find_recovery(actions.data_dir, [str(path)])
    assert found is not None
    restored = recover(found)
    assert np.array_equal(restored.layers[0].full(256, 256), doc.layers[0].full(256, 256))
    actions.saver.job.handled = True  # the dead process never finished it


def test_after_a_background_save_the_journal_carries_the_work_done_meanwhile(make, qtbot, tmp_path):
    _, session, actions = make()
    doc = session.document
    path = tmp_path / "pic.studio"
    with qtbot.waitSignal(actions.saver.finished, timeout=30_000):
        actions.start_save(path)
        paint(doc, 30, at=40)
    actions.journal.abandon()  # a crash after the save was handled
    found = find_recovery(actions.data_dir, [str(path)])
    assert found is not None and found.operations == 1
    assert (recover(found).layers[0].pixels[40:56, 40:56] == 30).all()


def test_save_asked_again_while_saving_follows_the_running_save(make, qtbot, tmp_path):
    window, session, actions = make()
    paint(session.document, 10)
    path = tmp_path / "pic.studio"
    actions.start_save(path)
    paint(session.document, 20, at=60)
    actions.start_save(path)  # Ctrl+S again before the first finished
    qtbot.waitUntil(lambda: session.document.is_clean and not actions.saver.running, timeout=30_000)
    assert (load_project(path).layers[0].pixels[60, 60] == 20).all()
    assert window.windowTitle() == "pic.studio — Studio"


def test_closing_waits_for_a_running_save(make, tmp_path):
    _, session, actions = make()
    paint(session.document, 10)
    path = tmp_path / "pic.studio"
    actions.start_save(path)
    assert actions.confirm_close()  # waits, then closes cleanly
    assert path.exists() and session.document.is_clean and actions.journal.path is None


def test_a_failed_background_save_says_why_and_keeps_the_work_unsaved(make, qtbot, tmp_path):
    window, session, actions = make()
    paint(session.document, 10)
    with qtbot.waitSignal(actions.saver.finished, timeout=30_000):
        actions.start_save(tmp_path / "no such folder" / "pic.studio")
    assert window.errors and "pic.studio" in window.errors[0]
    assert not session.document.is_clean and actions.path is None
