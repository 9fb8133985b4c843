"""The File menu's project actions: save/open round trip, the unsaved marker, close asks, crash recovery."""

from __future__ import annotations

import numpy as np
import pytest
from fake_engine import FakeEngine
from PySide6.QtWidgets import QMainWindow

import ui.project_actions as project_actions
from studio.document import Document
from studio.files.journal import find_recovery
from studio.files.project import load_project, save_project
from studio.gallery import Result
from studio.session import Session
from studio.settings import Settings
from ui.project_actions import ProjectActions


class Window(QMainWindow):
    """The parts of the main window ProjectActions uses: a title, settings, an error slot."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.errors: list[str] = []

    def show_error(self, message: str) -> None:
        self.errors.append(message)


@pytest.fixture
def make(qtbot, tmp_path):
    sessions: list[Session] = []

    def build(answers: dict[str, object] | None = None) -> tuple[Window, Session, ProjectActions]:
        window = Window(Settings(str(tmp_path / "settings.ini")))
        qtbot.addWidget(window)
        session = Session(FakeEngine(), document=Document(40, 30))
        sessions.append(session)
        actions = ProjectActions(window, session, window.menuBar().addMenu("File"))
        return window, session, actions

    yield build
    for session in sessions:
        assert session.shutdown(timeout=5)


def _stroke(session: Session, value: int = 200) -> None:
    doc = session.document
    doc.paint(doc.active_id, 3, 4, np.full((5, 6, 4), value, np.uint8))


def test_title_marks_unsaved_work_and_save_clears_it(make, tmp_path):
    window, session, actions = make()
    assert window.windowTitle() == "Untitled — Studio"
    _stroke(session)
    assert window.windowTitle() == "Untitled* — Studio"
    path = tmp_path / "pic.studio"
    assert actions.save_to(path)
    assert window.windowTitle() == "pic.studio — Studio" and actions.recent() == [str(path)]
    assert np.array_equal(load_project(path).layers[0].pixels, session.document.layers[0].pixels)
    session.document.undo()
    assert window.windowTitle() == "pic.studio* — Studio"


def test_opening_a_bad_file_shows_an_error_and_changes_nothing(make, tmp_path):
    window, session, actions = make()
    _stroke(session)
    before = session.document.layers[0].pixels.copy()
    bad = tmp_path / "bad.studio"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert not actions.open_path(bad)
    assert window.errors and "bad.studio" in window.errors[0]
    assert np.array_equal(session.document.layers[0].pixels, before) and not session.document.is_clean
    assert bad.read_bytes() == b"PK\x03\x04 not really"


def test_open_restores_layers_gallery_and_history(make, tmp_path):
    window, session, actions = make()
    _stroke(session, 77)
    result = Result(np.zeros((30, 40, 3), np.uint8), session.model.request.replace(prompt="a fox"))
    session.gallery.add(result)
    session.model.set_prompt_history(["a fox"])
    path = tmp_path / "fox.studio"
    assert actions.save_to(path)
    session.document.reset(40, 30)
    session.gallery.replace_all([])
    assert actions.path is None  # a new canvas is untitled
    assert actions.open_path(path)
    assert session.gallery.results[0].id == result.id and session.model.prompt_history == ["a fox"]
    assert session.document.layers[0].pixels[5, 5, 0] == 77
    assert window.windowTitle() == "fox.studio — Studio" and session.document.is_clean


def test_close_asks_and_cancel_keeps_the_window(make, tmp_path, monkeypatch):
    window, session, actions = make()
    monkeypatch.setattr(project_actions, "_attended", lambda: True)
    assert actions.confirm_close()  # nothing unsaved: no question
    _stroke(session)
    asked = []
    monkeypatch.setattr(ProjectActions, "ask_save", lambda self: asked.append(1) or "cancel")
    assert not actions.confirm_close() and asked
    monkeypatch.setattr(ProjectActions, "ask_save", lambda self: "discard")
    assert actions.confirm_close()
    assert find_recovery(actions.data_dir) is None  # a clean close leaves nothing to recover


def test_a_crash_is_offered_back_on_the_next_start(make, tmp_path, monkeypatch, qtbot):
    monkeypatch.setattr(project_actions, "_attended", lambda: True)
    monkeypatch.setattr(ProjectActions, "ask_restore", lambda self, found: True)
    path = tmp_path / "work.studio"
    save_project(path, Document(40, 30))
    window, session, actions = make()
    assert actions.open_path(path)
    _stroke(session, 123)
    session.document.add_layer("more")
    session.document.set_layer(session.document.active_id, opacity=0.3)
    want = [(la.id, la.name, la.opacity, la.pixels.tobytes()) for la in session.document.layers]
    # The "crash": this window lets go of its journal without a clean close; a second window starts.
    actions.journal.abandon()
    window2, session2, actions2 = make()
    qtbot.waitUntil(lambda: actions2.path == path.absolute(), timeout=5000)
    got = [(la.id, la.name, la.opacity, la.pixels.tobytes()) for la in session2.document.layers]
    assert got == want
    assert window2.windowTitle() == "work.studio* — Studio"  # restored work is unsaved until saved


def test_the_main_window_gets_the_project_actions(qtbot, tmp_path):
    main_window = pytest.importorskip("ui.main_window")
    session = Session(FakeEngine(), document=Document(40, 30))
    window = main_window.MainWindow(session, Settings(str(tmp_path / "settings.ini")))
    qtbot.addWidget(window)
    try:
        actions = window.project_actions
        assert isinstance(actions, ProjectActions)
        texts = [a.text() for a in window.file_menu.actions()]
        assert texts[:4] == ["Open project…", "Recent projects", "Save project", "Save project as…"]
        _stroke(session)
        assert window.windowTitle() == "Untitled* — Studio"
        assert actions.save_to(tmp_path / "w.studio") and window.windowTitle() == "w.studio — Studio"
        window.close()  # closeEvent asks confirm_close: saved, so it closes and removes the journal
        assert not list(tmp_path.glob("**/*.journal")) and not list(tmp_path.glob("**/.*.journal"))
    finally:
        assert session.shutdown(timeout=5)


def test_a_failed_save_shows_why_and_keeps_the_work_unsaved(make, tmp_path):
    window, session, actions = make()
    _stroke(session)
    assert not actions.save_to(tmp_path / "missing folder" / "x.studio")
    assert window.errors and "could not save" in window.errors[0]
    assert window.windowTitle() == "Untitled* — Studio" and actions.path is None


def test_opening_an_ora_file_gives_an_untitled_document_with_its_layers(make, tmp_path):
    from studio.files.ora import export_ora

    window, session, actions = make()
    source = Document(40, 30)
    source.add_layer("ink", np.full((30, 40, 4), 60, np.uint8))
    export_ora(tmp_path / "from krita.ora", source)
    assert actions.open_path(tmp_path / "from krita.ora")
    assert [la.name for la in session.document.layers] == ["Background", "ink"]
    assert actions.path is None and window.windowTitle().startswith("Untitled")


def test_the_windows_png_export_carries_the_chain_after_a_project_round_trip(make, tmp_path, capsys):
    from studio.cli.main import main
    from ui import exports

    window, session, actions = make()
    first = Result(np.full((30, 40, 3), 10, np.uint8), session.model.request.replace(prompt="a fox"))
    second = Result(
        np.full((30, 40, 3), 20, np.uint8),
        session.model.request.replace(prompt="a fox at dusk"),
        parents=(first.id,),
    )
    for result in (first, second):
        session.gallery.add(result)
    session.document.add_layer("dusk", second.image, source=second.id)
    assert actions.save_to(tmp_path / "fox.studio")
    session.document.reset(40, 30)
    session.gallery.replace_all([])
    assert actions.open_path(tmp_path / "fox.studio")

    session.document.paint(session.document.active_id, 0, 0, np.full((3, 3, 4), 255, np.uint8))  # paint over
    exports.export_png(str(tmp_path / "out.png"), session)
    assert main(["info", str(tmp_path / "out.png")]) == 0
    text = capsys.readouterr().out
    assert f"{second.id}-edit" in text and "composite" in text.lower()
    assert text.index(second.id, text.index("chain")) < text.index(first.id, text.index("chain"))


def test_a_demo_window_leaves_no_journal_when_the_app_quits(make, qtbot):
    window, session, actions = make()
    _stroke(session)
    journal = actions.journal.path
    assert journal is not None and journal.exists()
    window.ask_before_closing = True  # a person's window: quitting keeps the journal (closing asks)
    actions._quitting()
    assert journal.exists()
    window.ask_before_closing = False  # `studio --demo`: its work is its own
    actions._quitting()
    assert not journal.exists() and find_recovery(actions.data_dir) is None


def test_saving_a_migrated_project_keeps_the_original_beside_it(make, tmp_path):
    import json
    import zipfile

    from studio.files.archive import png_bytes

    path = tmp_path / "old.studio"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.png", png_bytes(np.full((30, 40, 4), 255, np.uint8)))
        z.writestr("m.png", png_bytes(np.zeros((30, 40), np.uint8)))
        manifest = {"format": "studio-project", "size": [40, 30], "mask": "m.png"}
        manifest["layers"] = [{"name": "paper", "opacity": 1.0, "visible": True, "image": "a.png"}]
        z.writestr("manifest.json", json.dumps(manifest))
    original = path.read_bytes()
    window, session, actions = make()
    assert actions.open_path(path)
    _stroke(session)
    assert actions.save_to(path)
    assert (tmp_path / "old.format0.studio").read_bytes() == original  # an older studio can still open it
    assert load_project(path).source_version == 1
    _stroke(session, 9)
    assert actions.save_to(path) and sorted(p.name for p in tmp_path.glob("*.studio")) == [
        "old.format0.studio",
        "old.studio",
    ]
