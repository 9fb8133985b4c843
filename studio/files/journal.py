"""Crash recovery: a journal of every finished operation, compacted by snapshots written on a worker thread.

While a person works, `Journal` appends one record per finished stroke, layer operation, accepted
result, prompt-history change and choice of active layer to a journal file, and fsyncs it before the
operation's signal returns, so before the next operation can start. The journal starts from a *base*:
the project file as it was opened or saved, an opened OpenRaster file, a recovery snapshot, or (a new
canvas) its header alone. A document no file holds yet gets a header that names the snapshot which
follows it, written on the worker; a crash before that snapshot lands loses the work of those moments.

Compaction (when the journal passes `max_bytes`, on a timer, after opening an .ora, after an operation
the journal cannot describe) never writes on the GUI thread: it takes a copy-on-write snapshot of the
document, appends a `saving` record naming the id the snapshot file will carry, and writes the file on a
worker (`studio.files.background_save`, as Save does) while records keep going to the same journal. Once the
file is written, the journal is rebased on it, carrying over the records made meanwhile. A crash at any
moment loses nothing: recovery (`studio.files.journal_recovery`) starts from the newest announced file that is
on disk and replays what follows it.

Files, for a project `dir/name.studio`: `dir/.name.studio.files.journal` and `dir/.name.studio.snapshot`;
for an unsaved document the same two files live in `<data dir>/recovery/untitled-<id>.*`.
A clean close deletes both. `find_recovery` finds what a crash left; `recover` rebuilds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal, Slot

from backend.errors import StudioError
from studio.commands import Command
from studio.document import Document
from studio.files.atomic import atomic_write
from studio.files.background_save import BackgroundSaver, SaveJob, SaveMark
from studio.files.journal_records import encode, encode_parts, operation_record
from studio.files.journal_recovery import (
    JOURNAL_SUFFIX,
    SNAPSHOT_SUFFIX,
    Recovery,
    discard_recovery,
    find_recovery,
    journal_path,
    lock,
    plan_replay,
    recover,
    remove_files,
    snapshot_path,
)
from studio.files.project import ProjectData, project_data, result_to_json
from studio.gallery import Gallery, Result

__all__ = [
    "JOURNAL_SUFFIX",
    "SNAPSHOT_SUFFIX",
    "Journal",
    "Recovery",
    "SaveMark",
    "discard_recovery",
    "find_recovery",
    "journal_path",
    "recover",
    "snapshot_path",
]

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_MS = 5 * 60 * 1000
MAX_JOURNAL_BYTES = 256 * 1024 * 1024
# The timer compacts only a journal that has grown enough that replaying it would be slow.
TIMER_MIN_BYTES = 16 * 1024 * 1024


class Journal(QObject):
    """Writes the recovery journal of one document, gallery and prompt history."""

    failed = Signal(str)  # the journal could not be written: recovery is off until the next save
    compacted = Signal()  # a snapshot written on the worker became the journal's base

    def __init__(
        self,
        document: Document,
        gallery: Gallery | None,
        data_dir: str | Path,
        history: Callable[[], Sequence[str]] | None = None,
        snapshot_every_ms: int = SNAPSHOT_EVERY_MS,
        max_bytes: int = MAX_JOURNAL_BYTES,
    ) -> None:
        super().__init__()
        self.document = document
        self.gallery = gallery
        self.data_dir = Path(data_dir)
        self.history = history or (lambda: [])
        self.max_bytes = max_bytes
        self.timer_min_bytes = min(TIMER_MIN_BYTES, max_bytes)
        self.path: Path | None = None
        self.project: Path | None = None
        self.kind: str | None = None  # the base: "project", "ora", "snapshot", "blank" or "adopted"
        self._fd: int | None = None
        self._records = 0
        self._marks: dict[str, int] = {}  # save id → offset just after its `saving` record, in this file
        self._saves: set[str] = set()  # project saves begun and not yet noted: snapshots wait for them
        self._required: set[str] = set()  # ids of snapshots that hold an operation no record describes
        self._paused = 0
        self._writer = BackgroundSaver(self, "studio-snapshot")  # one snapshot at a time
        self._writer.finished.connect(self._snapshot_written)
        self._queued: SaveJob | None = None  # a required snapshot taken, waiting for the writer or a save
        self._base: SaveJob | None = None  # the first snapshot of a journal that starts without a file
        self._again = False  # a compaction was asked for while a snapshot or a save was running
        self._timer = QTimer(self)
        self._timer.setInterval(snapshot_every_ms)
        self._timer.timeout.connect(self._on_timer)
        document.operation.connect(self._on_operation)
        document.changed.connect(self._on_changed)
        document.active_changed.connect(self._on_active_changed)
        if gallery is not None:
            gallery.added.connect(self._on_result_added)
            gallery.removed.connect(self._on_result_removed)
            gallery.reset.connect(self._on_gallery_reset)

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(
        self,
        project: str | Path | None = None,
        save_id: str | None = None,
        unsaved_work: bool = False,
        tail: bytes = b"",
        opened: str | Path | None = None,
        max_pixels: int | None = None,
    ) -> None:
        """Begin journalling the document as it is now.

        With the `save_id` of the project file the document was just opened from or saved to, the
        journal builds on that file. With `opened`, the OpenRaster file it was just imported from
        (`max_pixels`: the limit it was opened with), it builds on that file and writes a snapshot in
        the background. Otherwise it first writes a snapshot of the current state (a fresh canvas).
        `unsaved_work` says that state is worth offering after a crash even if nothing else happens.
        `tail` holds records of operations done since that file was written (a save that ran in the
        background), replayed on top of it.
        """
        self._drop_pending()
        old = self.path
        self.project = Path(project).absolute() if project is not None else None
        untitled = old is not None and old.parent == self.data_dir / "recovery"
        if self.project is not None or not untitled:  # an untitled journal keeps its file when compacted
            self.path = journal_path(self.project, self.data_dir)
        assert self.path is not None
        extra: dict = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if save_id is not None and self.project is not None:
                kind, base = "project", self.project
            elif opened is not None:
                kind, base, save_id = "ora", Path(opened).absolute(), ""
                stat = base.stat()
                extra = {
                    "stat": [stat.st_size, stat.st_mtime_ns],
                    "layers": [layer.id for layer in self.document.layers],
                    "active": self.document.active_id,
                    "max_pixels": max_pixels,
                }
            elif (blank := self._blank()) is not None:  # a new canvas: the header alone describes it
                kind, base, save_id, extra = "blank", self.path, "", blank
            else:  # no file holds this state yet: its snapshot follows, written on the worker
                kind, base, save_id = "snapshot", snapshot_path(self.path), uuid.uuid4().hex
                extra = {"follows": True}
        except (OSError, StudioError) as exc:
            self._close_fd()
            self._fail(exc)
            return
        self._begin(kind, base, save_id, unsaved_work, tail, extra)
        self._marks = {}
        if old is not None and old != self.path:
            remove_files(old, snapshot_path(old))
        if extra.get("follows") and self._fd is not None:
            # Until it lands, a crash leaves a journal with no base (find_recovery skips it): at most the
            # work of the moment it takes to write a new canvas's snapshot.
            self._base = SaveJob(
                base, self._data(), self.document.save_point(), SaveMark(save_id), tag=self.path
            )
            self._writer.start(self._base)
        elif kind == "ora":
            self.compact()  # an .ora may change on disk while it is open: a snapshot soon stands alone

    def adopt(self, recovery: Recovery) -> None:
        """Carry on writing the journal a crash left, after its work was restored into the document.

        That journal already rebuilds exactly the restored state, so nothing needs writing first; it is
        then compacted in the background like any grown journal."""
        self._drop_pending()
        replay = plan_replay(recovery.journal)
        if replay.stale:  # its records no longer apply to its base: start over with a snapshot
            self.start(recovery.project, None, unsaved_work=True)
            return
        old = self.path
        self._close_fd()
        self.path, self.project = recovery.journal, recovery.project
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            os.ftruncate(fd, os.fstat(fd).st_size - replay.torn)  # a torn record would hide later ones
            os.fsync(fd)
        except OSError as exc:
            self._fail(exc)
            return
        self._fd = fd
        lock(fd)
        self._records, self._marks, self.kind = len(replay.records), {}, "adopted"
        if old is not None and old != self.path:
            remove_files(old, snapshot_path(old))
        self._timer.start()
        self.compact()

    def _begin(
        self, kind: str, base: Path, save_id: str, unsaved_work: bool, tail: bytes, extra: dict
    ) -> int:
        """Replace the journal with a base header (and `tail`); returns the header's length."""
        assert self.path is not None
        self._close_fd()
        header = encode(
            {
                "op": "base",
                "version": 1,
                "kind": kind,
                "base": str(base),
                "save_id": save_id,
                "project": str(self.project) if self.project else None,
                "unsaved_work": bool(unsaved_work),
                "started": time.time(),
                **extra,
            }
        )
        try:
            # Replacing the journal atomically switches from the old base to the new one in one step.
            atomic_write(self.path, header + tail)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            lock(self._fd)
        except (OSError, StudioError) as exc:
            self._fail(exc)
            return 0
        self._records = _count(tail)
        self.kind = kind
        if kind == "project" and not self._writer.running:
            remove_files(snapshot_path(self.path))
        self._timer.start()
        return len(header)

    def begin_save(self) -> SaveMark:
        """A project save is starting: note it in the journal (with the id the file will carry) and
        return the mark `note_saved` (or `end_save`, if it fails) needs. Operations after the mark are not
        in that file; should the process die after the file is written but before `note_saved`, recovery
        replays them from this record. Snapshots wait until the save is noted."""
        mark = self._mark(False)
        self._saves.add(mark.save_id)
        return mark

    def end_save(self, mark: SaveMark) -> None:
        """A save begun with `begin_save` failed or was dropped: snapshots need not wait for it."""
        self._saves.discard(mark.save_id)
        self._marks.pop(mark.save_id, None)
        self._resume()

    def note_saved(self, project: str | Path, save_id: str, since: SaveMark | None = None) -> None:
        """The document was saved to `project`: rebase the journal on that file (compacts it).

        `since` is the mark of a save that ran while the person kept working: the operations journalled
        after it carry over to the new journal, on top of the file."""
        if since is None:
            self.start(project, save_id)
            return
        self._saves.discard(since.save_id)
        offset = self._marks.get(since.save_id)
        tail = self._read_from(offset)
        if offset is None or tail is None:  # the journal failed or restarted: snapshot what is there now
            self.start(project, save_id)
            self.compact(required=True)
            return
        old = self.path
        self.project = Path(project).absolute()
        self.path = journal_path(self.project, self.data_dir)
        marks = self._carried_marks(offset)
        length = self._begin("project", self.project, save_id, False, tail, {})
        self._marks = {key: length + value - offset for key, value in marks.items()}
        running = self._writer.job if self._writer.running else None
        if running is not None and running.mark.save_id not in self._marks:
            running.tag = None  # began before the save: the saved file holds its state
        if self._queued is not None:  # not started yet: it writes beside the journal's new place
            self._queued.path, self._queued.tag = snapshot_path(self.path), self.path
        if old is not None and old != self.path:
            remove_files(old, *([] if running is not None else [snapshot_path(old)]))
        self._resume()

    def compact(self, required: bool = False) -> None:
        """Write a snapshot of the current state on a worker thread and rebase the journal on it.

        Records keep going to this journal meanwhile, after a `saving` record naming the snapshot.
        `required`: the state holds an operation the journal cannot describe, so recovery must not
        replay past this point without the snapshot (it stops there if the snapshot never landed)."""
        if self.path is None or self._fd is None:
            return
        if required:
            # Taken now, where the operation happened; it replaces a queued one, which it includes.
            self._queued = self._snapshot_job(required=True)
        elif not self._writer.running and not self._saves:
            self._writer.start(self._snapshot_job(required=False))
            return
        else:
            self._again = True  # when the writer is free, if the journal is still worth compacting
        self._resume()

    def _resume(self) -> None:
        """Start the next snapshot if the writer is free and no project save is running."""
        if self._writer.running or self._saves or self._fd is None:
            return
        job, self._queued = self._queued, None
        if job is None and self._again:
            self._again = False
            if self._records and os.fstat(self._fd).st_size > self.timer_min_bytes:  # still worth it
                job = self._snapshot_job(required=False)
        if job is not None:
            self._writer.start(job)

    def wait(self) -> None:
        """Finish the snapshots being written or queued (tests; a journal about to change hands)."""
        while self._writer.running:
            job = self._writer.join()
            if job is not None:
                self._snapshot_written(job)

    def _drop_pending(self) -> None:
        """The state is being replaced: a snapshot of the old one is of no use; let the writer finish."""
        self._queued, self._again = None, False
        self._saves.clear()  # a save of the old state no longer holds back this journal's snapshots
        self._required.clear()
        if self._writer.running and self._writer.job is not None:
            self._writer.job.tag = None
        self.wait()

    def close(self) -> None:
        """A clean close: stop journalling and delete the journal and its snapshot."""
        self._timer.stop()
        self._queued, self._again = None, False
        self._saves.clear()
        self._writer.join()  # a snapshot still being written must not land after the files are gone
        if self._writer.job is not None:
            self._writer.job.handled = True
        self._close_fd()
        if self.path is not None:
            remove_files(self.path, snapshot_path(self.path))
        self.path = None

    def abandon(self) -> None:
        """Stop writing and let go of the journal without deleting it: exactly what a crash leaves behind."""
        self._timer.stop()
        self._queued, self._again = None, False
        self._close_fd()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Ignore changes inside the block (replacing the whole document); call `start` afterwards."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @property
    def active(self) -> bool:
        """True while records are being written."""
        return self._fd is not None

    @property
    def compacting(self) -> bool:
        """True while a snapshot is being written on the worker thread."""
        return self._writer.running

    # -- snapshots on the worker -----------------------------------------------------------------------
    def _mark(self, required: bool) -> SaveMark:
        mark = SaveMark(uuid.uuid4().hex)
        end = self._append(
            {"op": "saving", "save_id": mark.save_id, **({"required": True} if required else {})}
        )
        if end is not None:
            self._marks[mark.save_id] = end
        return mark

    def _snapshot_job(self, required: bool) -> SaveJob:
        assert self.path is not None
        mark = self._mark(required)
        if required:
            self._required.add(mark.save_id)
        data = self._data()  # copy-on-write: microseconds, and the state exactly at the mark
        return SaveJob(snapshot_path(self.path), data, self.document.save_point(), mark, tag=self.path)

    @Slot(object)
    def _snapshot_written(self, job: SaveJob) -> None:
        if job.handled:
            return
        job.handled = True
        if self._fd is None:
            return  # abandoned or failed: the files stay as a crash would leave them
        if job is self._base:
            self._base = None
            if job.error is not None and job.tag == self.path:
                self._fail(StudioError(job.error))  # the journal has nothing to build on
                return
            self._resume()
            return
        offset = self._marks.get(job.mark.save_id)
        if job.error is not None or job.save_id is None:
            log.warning("recovery snapshot failed: %s", job.error)
            if offset is not None and job.tag == self.path and job.mark.save_id in self._required:
                self._fail(StudioError(job.error or "the snapshot was not written"))
                return
        elif offset is not None and job.tag == self.path:
            self._rebase_on_snapshot(job, offset)
        elif not (self.kind in ("snapshot", "adopted") and job.path == snapshot_path(self.path or job.path)):
            remove_files(job.path)  # written for a state the journal has since left behind
        self._resume()

    def _rebase_on_snapshot(self, job: SaveJob, offset: int) -> None:
        tail = self._read_from(offset)
        if tail is None or job.save_id is None:
            return
        marks = self._carried_marks(offset)
        length = self._begin("snapshot", job.path, job.save_id, True, tail, {})
        self._marks = {key: length + value - offset for key, value in marks.items()}
        self.compacted.emit()

    def _carried_marks(self, offset: int) -> dict[str, int]:
        """Marks after `offset`: their `saving` records travel with the tail into the rebased journal."""
        return {key: value for key, value in self._marks.items() if value > offset}

    def _read_from(self, offset: int | None) -> bytes | None:
        if self._fd is None or self.path is None or offset is None:
            return None
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return None

    # -- records ---------------------------------------------------------------------------------------
    def record_history(self, items: Sequence[str] | None = None) -> None:
        """Record the prompt history (call after it changes)."""
        self._append({"op": "history", "items": list(items if items is not None else self.history())})

    def _on_operation(self, what: str, command: Command) -> None:
        if self._paused or self._fd is None:
            return
        record = operation_record(what, command, self.document)
        if record is None:  # an operation this journal cannot describe: a snapshot holds it exactly
            self.compact(required=True)
        else:
            self._append(*record)

    def _on_active_changed(self, layer_id: str) -> None:
        # A few dozen bytes: choosing a layer is no undo step, but recovery should paint where the person was.
        self._append({"op": "active", "active": layer_id})

    def _on_changed(self, kind: str) -> None:
        if kind == "reset" and not self._paused and self._fd is not None:
            self.start(self.project)  # a new document: a new canvas's header, or its snapshot on the worker

    def _on_gallery_reset(self) -> None:
        if not self._paused and self._fd is not None:
            self.compact(required=True)

    def _on_result_added(self, result: Result) -> None:
        arrays = [result.image] + ([result.attribution] if result.attribution is not None else [])
        self._append({"op": "add_result", "result": result_to_json(result)}, arrays)

    def _on_result_removed(self, result_id: str) -> None:
        self._append({"op": "remove_result", "id": result_id})

    def _append(self, header: dict, arrays: Sequence[np.ndarray] = ()) -> int | None:
        """Write one record durably; returns the journal's length after it (None when not written)."""
        if self._paused or self._fd is None:
            return None
        try:
            for part in encode_parts(header, arrays):
                view = memoryview(part)
                while view:
                    view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)  # durable before the next operation can start
            end = os.fstat(self._fd).st_size
        except OSError as exc:
            self._fail(exc)
            return None
        self._records += 1
        if end > self.max_bytes and header.get("op") != "saving":
            self.compact()
        return end

    def _on_timer(self) -> None:
        if self._fd is not None and self._records and os.fstat(self._fd).st_size > self.timer_min_bytes:
            self.compact()

    def _blank(self) -> dict | None:
        """The document as header fields when every layer is one flat colour and there is no mask or
        gallery (a new canvas), else None: such a base costs no file at all."""
        doc = self.document
        if (self.gallery is not None and self.gallery.results) or doc.mask.any():
            return None
        layers = []
        for layer in doc.layers:
            flat = np.ascontiguousarray(layer.pixels).reshape(-1, 4)
            words = flat.view(np.uint32).ravel()
            if not words.size or not (words == words[0]).all():
                return None
            h, w = layer.pixels.shape[:2]
            layers.append({**layer.properties(), "w": w, "h": h, "fill": flat[0].tolist()})
        return {
            "width": doc.width,
            "height": doc.height,
            "layers": layers,
            "active": doc.active_id,
            "history": list(self.history()),
        }

    def _data(self) -> ProjectData:
        return project_data(self.document, self.gallery, list(self.history()))

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _fail(self, exc: BaseException) -> None:
        self._close_fd()
        self.failed.emit(f"Crash recovery is off: cannot write the recovery journal ({exc}). Save your work.")


def _count(tail: bytes) -> int:
    from studio.files.journal_records import decode_all

    return len(decode_all(tail)[0]) if tail else 0
