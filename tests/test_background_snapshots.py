"""Recovery snapshots are written on a worker thread, and a crash at any moment of one loses nothing.

The journal compacts itself (past its size limit, on its timer, after an .ora is opened, after an
operation it cannot describe) by writing a snapshot of the document. These tests hold the worker at the
start of its write with a gate, so each moment of a crash is reached on purpose: before the file is
written, after it is written but before the window hears of it, and after the journal was rebased.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_engine import FakeEngine
from test_background_save import Window, paint
from test_crash_safety import _work, digest

import studio.files.background_save
from studio.commands import Command
from studio.document import Document
from studio.files.background_save import BackgroundSaver
from studio.files.journal import Journal, find_recovery, recover, snapshot_path
from studio.files.ora import export_ora
from studio.files.project import load_project, project_data
from studio.gallery import Gallery
from studio.session import Session
from studio.settings import Settings
from ui.project_actions import ProjectActions


class Gate:
    """Holds a background writer (the journal's snapshots, or a save) before it writes, and says on which
    threads it wrote."""

    def __init__(self, journal: Journal, writer: BackgroundSaver | None = None) -> None:
        self.open = threading.Event()
        self.threads: list[str] = []
        writer = writer or journal._writer
        run = writer._run

        def held(job) -> None:  # noqa: ANN001 - a SaveJob
            self.threads.append(threading.current_thread().name)
            self.open.wait(30)
            run(job)

        writer._run = held

    def release(self, journal: Journal) -> None:
        """Let the write happen and wait for the file (the window has not handled it yet)."""
        self.open.set()
        journal._writer.join()


@pytest.fixture
def no_snapshot_on_the_gui_thread(monkeypatch):
    """Names every snapshot or save written on the GUI thread (the list should stay empty)."""
    calls: list[str] = []
    original = studio.files.background_save.save_project

    def watched(path, *args, **kwargs):  # noqa: ANN001, ANN202
        if threading.current_thread() is threading.main_thread():
            calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(studio.files.background_save, "save_project", watched)
    return calls


class Crop(Command):
    """An operation the journal has no record for (a future command, a canvas change)."""

    def apply(self, d: Document) -> None:
        d.layers[0].name = "cropped"

    def revert(self, d: Document) -> None:
        d.layers[0].name = "Background"


def test_a_grown_journal_is_compacted_on_a_worker_and_a_crash_during_it_loses_nothing(
    tmp_path, qtbot, no_snapshot_on_the_gui_thread
):
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path, history=lambda: history, max_bytes=20_000)
    journal.start()
    gate = Gate(journal)
    _work(doc, gallery, history, upto=8)  # holds result layers: past 20 kB, a compaction starts
    journal.record_history()
    assert journal.compacting and gate.threads == ["studio-snapshot"]
    _work(doc, gallery, history, seed=5, upto=10)  # the person keeps working while it is written
    journal.record_history()
    journal.abandon()  # the process dies before the snapshot is written
    assert digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery, history))
    gate.release(journal)  # ... or right after it was written: the journal still holds what followed
    assert digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery, history))
    assert no_snapshot_on_the_gui_thread == []
    journal.close()


def test_the_journal_rebases_on_the_written_snapshot_and_carries_over_the_work_done_meanwhile(
    tmp_path, qtbot
):
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path, history=lambda: history)
    journal.start()
    gate = Gate(journal)
    _work(doc, gallery, history, upto=8)
    journal.record_history()
    grown = journal.path.stat().st_size
    journal.compact()  # as the timer does
    paint(doc, 77, at=4)  # during the write
    with qtbot.waitSignal(journal.compacted, timeout=30_000):
        gate.open.set()
    assert journal.path.stat().st_size < grown / 4 and not journal.compacting
    snapshot = load_project(snapshot_path(journal.path))
    assert not (snapshot.layers[0].pixels[4:20, 4:20] == 77).all()  # the snapshot predates the stroke ...
    journal.abandon()
    found = find_recovery(tmp_path)
    assert found is not None and found.operations == 1  # ... which the rebased journal carries
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))
    journal.close()


def test_an_operation_the_journal_cannot_describe_is_never_replayed_past(tmp_path, qtbot):
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path, history=lambda: history)
    journal.start()
    gate = Gate(journal)
    _work(doc, gallery, history, upto=4)
    journal.record_history()
    before = digest(project_data(doc, gallery, history))
    doc.push(Crop())  # a required snapshot: nothing in the journal says what it did
    assert journal.compacting
    paint(doc, 33, at=8)  # builds on the crop
    journal.abandon()
    # Dying before the snapshot is written: the work up to the crop, consistent, never records after it.
    assert digest(recover(find_recovery(tmp_path))) == before
    gate.release(journal)  # dying after it is written: everything
    assert digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery, history))
    journal.close()


def test_a_save_started_during_a_snapshot_keeps_every_operation(tmp_path, qtbot):
    window = Window(Settings(str(tmp_path / "settings.ini")))
    qtbot.addWidget(window)
    session = Session(FakeEngine(), document=Document(128, 128))
    try:
        actions = ProjectActions(window, session, window.menuBar().addMenu("File"))
        doc, journal = session.document, actions.journal
        path = tmp_path / "pic.studio"
        assert actions.save_to(path)
        gate = Gate(journal)
        save_gate = Gate(journal, actions.saver)
        paint(doc, 10)
        journal.compact()  # the timer fired
        assert journal.compacting
        actions.start_save(path)  # Ctrl+S while the snapshot is being written
        paint(doc, 20, at=40)
        journal.compact()  # waits for the save: never two writers at once
        with qtbot.waitSignal(journal.compacted, timeout=30_000):
            gate.open.set()  # the snapshot lands in the middle of the save
        assert not journal.compacting and actions.saver.running
        paint(doc, 25, at=60)
        with qtbot.waitSignal(actions.saver.finished, timeout=30_000):
            save_gate.open.set()
        saved = load_project(path).layers[0].pixels
        assert journal.kind == "project" and saved[0, 0, 0] == 10 and saved[40, 40, 0] == 255  # as asked
        paint(doc, 30, at=80)
        journal.wait()
        journal.abandon()
        found = find_recovery(actions.data_dir, [str(path)])
        restored = recover(found)
        assert np.array_equal(restored.layers[0].full(128, 128), doc.layers[0].full(128, 128))
        assert not window.errors
    finally:
        assert session.shutdown(timeout=5)


def test_opening_an_ora_and_restoring_write_no_snapshot_on_the_gui_thread(
    tmp_path, qtbot, no_snapshot_on_the_gui_thread
):
    settings = Settings(str(tmp_path / "settings.ini"))
    picture = Document(96, 64)
    paint(picture, 90, at=8)
    export_ora(tmp_path / "in.ora", picture)
    sessions = []

    def window_on(engine) -> tuple[Window, Session, ProjectActions]:  # noqa: ANN001
        window = Window(settings)
        qtbot.addWidget(window)
        session = Session(engine, document=Document(32, 32))
        sessions.append(session)
        return window, session, ProjectActions(window, session, window.menuBar().addMenu("File"))

    try:
        _, session, actions = window_on(FakeEngine())
        gate = Gate(actions.journal)
        assert actions.open_path(tmp_path / "in.ora")
        assert actions.journal.kind == "ora" and actions.journal.compacting  # the .ora is the base for now
        paint(session.document, 50, at=30)
        actions.journal.abandon()  # a crash before the snapshot is written: the .ora and the stroke
        found = find_recovery(actions.data_dir)
        assert digest(recover(found)) == digest(project_data(session.document))
        gate.open.set()
        actions.journal._writer.join()
        session.shutdown(timeout=5)

        # The next start offers that work back; restoring goes on writing the same journal.
        window, session, actions = window_on(FakeEngine())
        gate = Gate(actions.journal)
        assert actions.restore(found)
        assert actions.journal.path == found.journal and not window.errors
        paint(session.document, 60, at=50)
        actions.journal.abandon()
        again = find_recovery(actions.data_dir)
        assert again.journal == found.journal
        assert digest(recover(again)) == digest(project_data(session.document))
        gate.open.set()
        actions.journal._writer.join()
        assert no_snapshot_on_the_gui_thread == []
    finally:
        for session in sessions:
            session.shutdown(timeout=5)


def test_a_merge_down_and_its_undo_are_journalled_without_a_snapshot(tmp_path, qtbot):
    doc, gallery = Document(48, 40), Gallery()
    journal = Journal(doc, gallery, tmp_path)
    journal.start()
    ink = doc.add_layer("ink")
    doc.paint(ink.id, 30, 20, np.full((12, 20, 4), (200, 10, 10, 128), np.uint8))  # grows past the canvas
    doc.set_layer(ink.id, opacity=0.6)
    states = []
    for step in (lambda: doc.merge_down(ink.id), doc.undo, doc.redo, doc.undo):
        step()
        assert not journal.compacting  # a record describes it: nothing to snapshot
        journal.abandon()
        states.append(digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery)))
        journal.start()  # a fresh journal for the next step
        journal.wait()  # its first snapshot (the document is no blank canvas now)
    assert states == [True, True, True, True]
    journal.close()


def test_a_new_canvas_needs_no_file_and_one_with_a_gallery_writes_it_on_the_worker(
    tmp_path, qtbot, no_snapshot_on_the_gui_thread
):
    doc, gallery, history = Document(64, 48), Gallery(), ["a prompt"]
    journal = Journal(doc, gallery, tmp_path, history=lambda: history)
    journal.start()  # a blank canvas: its header says everything
    assert journal.kind == "blank" and not journal.compacting and not snapshot_path(journal.path).exists()
    paint(doc, 40, at=8)
    journal.abandon()
    assert digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery, history))

    _work(doc, gallery, history, upto=6)  # results in the gallery: the header cannot hold them
    doc.reset(64, 48)  # New canvas keeps the gallery
    gate = Gate(journal)
    journal.start()
    assert journal.kind == "snapshot" and journal.compacting  # its first snapshot follows
    journal.abandon()  # a crash before it is written: nothing to build on, and nothing offered
    assert find_recovery(tmp_path) is None and not journal.path.exists()
    gate.open.set()
    journal._writer.join()

    journal.start()
    journal.wait()
    paint(doc, 70, at=20)
    journal.abandon()
    assert digest(recover(find_recovery(tmp_path))) == digest(project_data(doc, gallery, history))
    assert no_snapshot_on_the_gui_thread == []
    journal.close()
