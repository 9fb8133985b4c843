"""The File menu's project actions: Open, Save, Save As, recent projects, the unsaved marker, recovery.

`MainWindow` creates one `ProjectActions(window, session, file_menu)`. It owns the recovery journal of
the window's document: every finished operation is journalled, and on the next start after a crash the
person is offered the work back. Files are read and written by `studio.files.project`, `studio.files.ora` and
`studio.files.journal`; this module only asks questions and shows results.

Without a person at the screen (the offscreen or minimal Qt platform: tests, `--demo`) nothing modal is
ever shown: recovery is not offered (the journal stays for a real session) and closing does not ask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from PySide6.QtCore import QObject, QStandardPaths, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication, QFileDialog, QMenu, QMessageBox, QWidget

from backend.errors import StudioError
from studio.files.background_save import BackgroundSaver, SaveJob
from studio.files.journal import Journal, Recovery, discard_recovery, find_recovery, recover
from studio.files.ora import import_ora
from studio.files.project import FORMAT_VERSION, ProjectData, load_project, project_data
from studio.settings import Settings

PROJECT_FILTER = "Studio projects (*.studio)"
OPEN_FILTER = (
    "Studio projects and OpenRaster (*.studio *.ora);;Studio projects (*.studio);;OpenRaster (*.ora)"
)
RECENT_KEY = "projects/recent"
RECENT_SIZE = 8
APP_TITLE = "Studio"


class ProjectActions(QObject):
    """Open/Save/Save As/recent projects for one window, its title's unsaved marker, and crash recovery.

    Signal `history_started(str)`: the document was replaced from a file (opened, or restored after a
    crash), whose undo steps are not kept; the text names the starting point, e.g. "the opened fox.studio".
    """

    history_started = Signal(str)

    def __init__(self, window: QWidget, session, file_menu: QMenu) -> None:  # noqa: ANN001 - a Session
        super().__init__(window)
        self.window = window
        self.session = session
        self.document = session.document
        self.gallery = session.gallery
        self.settings: Settings = getattr(window, "settings", None) or Settings()
        self.path: Path | None = None
        self._migrated: tuple[Path, int] | None = None  # an older-format file not yet saved over
        self._unsaved_extra = False  # changes the document's undo stack does not see (gallery, recovery)
        self._extra_changes = 0  # counts those changes: a save clears the flag only if none came after it
        self._epoch = 0  # counts documents (new canvas, open, restore): a save of an older one is stale
        self._save_again: Path | None = None  # asked to save while a save was running
        self._loading = False
        self.saver = BackgroundSaver(self)
        self.saver.finished.connect(self._save_finished)
        self.data_dir = _data_dir(self.settings)
        self.journal = Journal(self.document, self.gallery, self.data_dir, history=self._history)
        self.journal.failed.connect(self._journal_failed)
        session.model.history_changed.connect(self._history_changed)
        self.document.clean_changed.connect(self._update_title)
        self.document.changed.connect(self._document_changed)
        self.gallery.added.connect(self._gallery_changed)
        self.gallery.removed.connect(self._gallery_changed)
        self._make_actions(file_menu)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._quitting)
        self.journal.start()
        self._update_title()
        QTimer.singleShot(0, self.offer_recovery)

    # -- menu ------------------------------------------------------------------------------------------
    def _make_actions(self, menu: QMenu) -> None:
        def action(text: str, slot, shortcut=None) -> QAction:  # noqa: ANN001
            act = QAction(text, self.window)
            if shortcut is not None:
                act.setShortcut(QKeySequence(shortcut))
            act.triggered.connect(slot)
            return act

        self.open_action = action("Open project…", self.open, QKeySequence.StandardKey.Open)
        self.save_action = action("Save project", self.save, QKeySequence.StandardKey.Save)
        self.save_as_action = action("Save project as…", self.save_as, QKeySequence.StandardKey.SaveAs)
        self.recent_menu = QMenu("Recent projects", self.window)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        first = menu.actions()[0] if menu.actions() else None
        for item in (self.open_action, self.recent_menu.menuAction(), self.save_action, self.save_as_action):
            menu.insertAction(first, item)
        menu.insertSeparator(first)
        self._fill_recent()

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.recent():
            act = QAction(Path(path).name, self.recent_menu)
            self.recent_menu.addAction(act)
            act.setToolTip(path)
            act.setData(path)
            act.triggered.connect(self._open_recent)
        self.recent_menu.setEnabled(bool(self.recent()))

    @Slot()
    def _open_recent(self) -> None:
        act = self.sender()
        if isinstance(act, QAction) and self._may_discard():
            self.open_path(str(act.data()))

    def recent(self) -> list[str]:
        """Recently opened or saved projects, newest first."""
        try:
            items = json.loads(self.settings.value(RECENT_KEY, "[]") or "[]")
        except (TypeError, ValueError):
            return []
        return [p for p in items if isinstance(p, str)][:RECENT_SIZE]

    def _remember(self, path: Path) -> None:
        items = [str(path)] + [p for p in self.recent() if p != str(path)]
        self.settings.set_value(RECENT_KEY, json.dumps(items[:RECENT_SIZE]))
        self._fill_recent()

    # -- state and title -------------------------------------------------------------------------------
    @property
    def modified(self) -> bool:
        """True when there is work that is not in the project file."""
        return not self.document.is_clean or self._unsaved_extra

    def title(self) -> str:
        """The window title: the project's name, `*` when unsaved, and the app's name."""
        name = self.path.name if self.path else "Untitled"
        return f"{name}{'*' if self.modified else ''} — {APP_TITLE}"

    @Slot()
    def _update_title(self, *_: object) -> None:
        self.window.setWindowTitle(self.title())

    @Slot(str)
    def _document_changed(self, kind: str) -> None:
        if kind == "reset":
            self._epoch += 1
        if kind == "reset" and not self._loading:  # the window's New canvas: a new, untitled document
            self.path = None
            self._unsaved_extra = False
            self.journal.close()
            self.journal.start()
        self._update_title()

    @Slot(object)
    def _gallery_changed(self, *_: object) -> None:
        if not self._loading:
            self._extra_changes += 1
            self._unsaved_extra = True
            self._update_title()

    def _history(self) -> list[str]:
        return list(self.session.model.prompt_history)

    @Slot()
    def _history_changed(self) -> None:
        if not self._loading:
            self.journal.record_history()

    # -- open ------------------------------------------------------------------------------------------
    @Slot()
    def open(self) -> None:
        """Ask for a project (or an OpenRaster file) and open it, after offering to save unsaved work."""
        if not self._may_discard():
            return
        start = str(self.path.parent) if self.path else ""
        path, _ = QFileDialog.getOpenFileName(self.window, "Open project", start, OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> bool:
        """Open a .studio project or an .ora file; on any error show it and change nothing."""
        path = Path(path)
        self.wait_for_save()
        try:
            limit = self.settings.max_canvas_pixels
            if path.suffix.lower() == ".ora":
                width, height, layers = import_ora(path, max_pixels=limit)
                data = ProjectData(width, height, layers, _blank_mask(width, height))
            else:
                data = load_project(path, max_pixels=limit)
        except StudioError as exc:
            self._error(str(exc))
            return False
        is_project = path.suffix.lower() != ".ora"
        self._apply(data, path if is_project else None)
        if is_project and data.source_version < FORMAT_VERSION:
            self._migrated = (path.absolute(), data.source_version)
        if is_project:
            self.journal.start(self.path, data.save_id)
        else:  # builds on the .ora itself; its snapshot is written in the background
            self.journal.start(opened=path, max_pixels=limit)
        if is_project:
            self._remember(path)
        self.history_started.emit(f"the opened {path.name}")
        self._status("; ".join([f"Opened {path.name}: undo history starts here", *data.notes]))
        return True

    def _apply(self, data: ProjectData, path: Path | None, unsaved: bool = False) -> None:
        if self.session.runs.running:  # a run started on the old canvas must not land on the new one
            self.session.runs.cancel()
        self._migrated = None
        self._loading = True
        try:
            with self.journal.paused():
                data.apply_to(self.document, self.gallery)
                self.session.model.set_prompt_history(list(data.prompt_history))
        finally:
            self._loading = False
        self.path = path
        self._unsaved_extra = unsaved
        self._update_title()

    # -- save ------------------------------------------------------------------------------------------
    @Slot()
    def save(self) -> bool:
        """Save to the current project file in the background (asks for one the first time).

        True when a save started; the title loses its `*` when it has finished.
        """
        if self.path is None:
            return self.save_as()
        return self.start_save(self.path)

    @Slot()
    def save_as(self) -> bool:
        """Ask for a file name and save there in the background; True when a save started."""
        path = self._ask_save_path()
        return path is not None and self.start_save(path)

    def _ask_save_path(self) -> Path | None:
        start = str(self.path) if self.path else "untitled.studio"
        path, _ = QFileDialog.getSaveFileName(self.window, "Save project as", start, PROJECT_FILTER)
        if not path:
            return None
        return Path(path if path.lower().endswith(".studio") else path + ".studio")

    def start_save(self, path: str | Path) -> bool:
        """Save atomically to `path` on a worker thread; the window stays usable meanwhile.

        The snapshot is taken now; what the person does while it is written stays unsaved (and is
        carried over by the recovery journal). A save asked for while one runs follows it.
        """
        path = Path(path)
        if self.saver.running:
            self._save_again = path
            return True
        self.saver.start(self._snapshot(path))
        self._status(f"Saving {path.name}…")
        return True

    def save_to(self, path: str | Path) -> bool:
        """Save atomically to `path` and wait for it (closing the window); on failure show why (the old
        file is untouched). True when saved."""
        self.wait_for_save()
        job = self._snapshot(Path(path))
        job.run()
        return self._finish_save(job)

    def wait_for_save(self) -> bool:
        """Finish a save that is running (before closing, opening or restoring); False if it failed."""
        job = self.saver.join()
        if job is None or job.handled:
            return True
        return self._finish_save(job)

    def _snapshot(self, path: Path) -> SaveJob:
        migrated = self._migrated if self._migrated and self._migrated[0] == path.absolute() else None
        return SaveJob(
            path,
            project_data(self.document, self.gallery, self._history()),
            self.document.save_point(),
            self.journal.begin_save(),
            keep_format=migrated[1] if migrated else None,
            tag=(self._epoch, self._extra_changes),
        )

    @Slot(object)
    def _save_finished(self, job: SaveJob) -> None:
        if job.handled:  # already finished by wait_for_save
            return
        self._finish_save(job)
        again, self._save_again = self._save_again, None
        if again is not None and (self.modified or again != self.path):
            self.start_save(again)

    def _finish_save(self, job: SaveJob) -> bool:
        job.handled = True
        if job.error is not None or job.save_id is None:
            self.journal.end_save(job.mark)
            self._error(job.error or f"{job.path.name}: could not save")
            return False
        if job.kept is not None:
            self._status(f"Kept the original (an older format) as {job.kept.name}")
        epoch, extra_changes = cast(tuple[int, int], job.tag)
        if epoch != self._epoch:  # another document replaced the one that was saved meanwhile
            self.journal.end_save(job.mark)
            self._remember(job.path)
            self._status(f"Saved {job.path.name}")
            return True
        self.path = job.path
        self._migrated = None
        self._unsaved_extra = self._extra_changes != extra_changes
        self.document.set_clean(job.point)
        self.journal.note_saved(job.path, job.save_id, since=job.mark)
        self._remember(job.path)
        self._update_title()
        self._status(f"Saved {job.path.name}")
        return True

    # -- closing ---------------------------------------------------------------------------------------
    def confirm_close(self) -> bool:
        """Ask Save/Discard/Cancel when there is unsaved work; True when the window may close."""
        self.wait_for_save()
        if not self._may_discard():
            return False
        self.journal.close()  # a clean close: nothing left to recover
        return True

    @Slot()
    def _quitting(self) -> None:
        self.wait_for_save()
        # A window told not to ask (`studio --demo`) holds work of its own: nothing to offer next time.
        if not getattr(self.window, "ask_before_closing", True):
            self.journal.close()

    def _may_discard(self) -> bool:
        if not self.modified or not _attended():
            return True
        answer = self.ask_save()
        if answer == "save":  # the window is closing (or replacing its document): save and wait
            path = self.path or self._ask_save_path()
            return path is not None and self.save_to(path)
        return answer == "discard"

    def ask_save(self) -> str:
        """Ask what to do with unsaved work: "save", "discard" or "cancel"."""
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self.window,
            "Unsaved changes",
            f"Save the changes to {self.path.name if self.path else 'this untitled project'}?",
            buttons.Save | buttons.Discard | buttons.Cancel,
            buttons.Save,
        )
        return {buttons.Save: "save", buttons.Discard: "discard"}.get(answer, "cancel")

    # -- recovery --------------------------------------------------------------------------------------
    @Slot()
    def offer_recovery(self) -> bool:
        """After a crash, offer to restore the work it interrupted; True when something was restored."""
        found = find_recovery(self.data_dir, self.recent())
        if found is None or found.journal == self.journal.path or not _attended():
            return False
        if not self.ask_restore(found):
            discard_recovery(found)
            return False
        return self.restore(found)

    def restore(self, found: Recovery) -> bool:
        """Rebuild the document from a crash journal; it stays unsaved until the person saves it."""
        self.wait_for_save()
        try:
            data = recover(found)
        except StudioError as exc:
            self._error(f"Could not restore {found.title}: {exc}. The recovery files were kept.")
            return False
        self._apply(data, found.project, unsaved=True)
        self.journal.adopt(found)  # its journal already holds the restored work: go on writing it
        self.history_started.emit("the restored work")
        self._status(
            f"Restored {_what(found)} as it was before the crash (undo history starts here); "
            "save it to keep it"
        )
        return True

    def ask_restore(self, found: Recovery) -> bool:
        """Ask whether to restore the work a crash interrupted."""
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self.window,
            "Restore unsaved work?",
            f"Studio stopped unexpectedly while {_what(found)} had unsaved work "
            f"({found.operations} operations since the last save). Restore it?",
            buttons.Yes | buttons.Discard,
            buttons.Yes,
        )
        return answer == buttons.Yes

    # -- messages --------------------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        show = getattr(self.window, "show_error", None)
        if callable(show):
            show(message)
        elif _attended():
            QMessageBox.warning(self.window, APP_TITLE, message)

    def _status(self, message: str) -> None:
        status = getattr(self.window, "status", None)
        if status is not None and hasattr(status, "show_message"):
            status.show_message(message)

    @Slot(str)
    def _journal_failed(self, message: str) -> None:
        self._error(message)


def _what(found: Recovery) -> str:
    return f"“{found.title}”" if found.project else "an untitled canvas"


def _data_dir(settings: Settings) -> Path:
    """Where unsaved documents' journals live: beside an INI settings file (tests), else app data."""
    configured = settings.value("recovery/folder")
    if configured:
        return Path(str(configured))
    qsettings = getattr(settings, "qsettings", None)
    if qsettings is not None and qsettings.format() == qsettings.Format.IniFormat:
        return Path(qsettings.fileName()).parent / "studio-data"
    location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(location or Path.home() / ".studio")


def _attended() -> bool:
    """False on the offscreen and minimal platforms, where no person could answer a question."""
    app = QApplication.instance()
    return app is not None and QApplication.platformName() not in ("offscreen", "minimal")


def _blank_mask(width: int, height: int):  # noqa: ANN202 - an H×W uint8 array
    import numpy as np

    return np.zeros((height, width), np.uint8)
