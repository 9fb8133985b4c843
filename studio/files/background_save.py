"""Saving a project on a worker thread while the person keeps working.

The GUI thread takes a snapshot (`project.project_data`: layer pixels shared copy-on-write, so it costs
microseconds, not a copy of every layer), notes in the recovery journal that a save began, and hands the
snapshot to a `SaveJob`. `BackgroundSaver` runs the job on a thread (encoding PNGs and writing the zip:
seconds for a large canvas) and emits `finished(job)`, which arrives on the GUI thread. The file is
still written atomically (`project.save_project`); what the person did meanwhile stays unsaved, and the
journal carries it over to the new file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from backend.errors import StudioError
from studio.files.project import ProjectData, keep_original, save_project
from studio.history import SavePoint


@dataclass(frozen=True)
class SaveMark:
    """Where a save (or a recovery snapshot) began in the journal: the id the file it writes will carry."""

    save_id: str


@dataclass
class SaveJob:
    """One save: what to write where, the state it came from, and (once run) how it went."""

    path: Path
    data: ProjectData
    point: SavePoint  # the document's history position the snapshot was taken at
    mark: SaveMark  # where the save began in the recovery journal (and the file's save id)
    keep_format: int | None = None  # an older format being saved over: keep a copy of the original first
    tag: object = None  # the caller's own bookkeeping, returned untouched
    save_id: str | None = None
    error: str | None = None
    kept: Path | None = None  # the copy of the original, when one was made
    handled: bool = False

    def run(self) -> None:
        """Write the file (on any thread); the outcome goes to `save_id` or `error`, never raises."""
        try:
            if self.keep_format is not None:
                self.kept = keep_original(self.path, self.keep_format)
            self.save_id = save_project(self.path, self.data, save_id=self.mark.save_id)
        except StudioError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a worker must report every failure, not die with it
            self.error = f"{self.path.name}: could not save ({exc.__class__.__name__}: {exc})"


class BackgroundSaver(QObject):
    """Runs one `SaveJob` at a time on a worker thread; `finished(job)` is delivered on the GUI thread."""

    finished = Signal(object)

    def __init__(self, parent: QObject | None = None, name: str = "studio-save") -> None:
        super().__init__(parent)
        self.name = name  # the worker thread's name
        self._worker: threading.Thread | None = None
        self.job: SaveJob | None = None

    @property
    def running(self) -> bool:
        """True while a job has been started and not yet handed back."""
        return self.job is not None and not self.job.handled

    def start(self, job: SaveJob) -> None:
        """Run `job` on a new worker thread (the previous one must have finished)."""
        assert not self.running, "one save at a time"
        self.job = job
        self._worker = threading.Thread(target=self._run, args=(job,), name=self.name)
        self._worker.start()

    def join(self) -> SaveJob | None:
        """Wait for the worker (closing, opening another file); returns the job, handled or not."""
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        return self.job

    def _run(self, job: SaveJob) -> None:
        job.run()
        self.finished.emit(job)  # queued to the GUI thread, where this object lives
