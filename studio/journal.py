"""Crash recovery: a journal of every finished operation, compacted by periodic snapshots.

While a person works, `Journal` appends one record per finished stroke, layer operation, accepted
result, prompt-history change and choice of active layer to a journal file, and fsyncs it before the
operation's signal returns, so before the next operation can start. The journal starts from a *base*:
the project file as it was opened or saved, or a snapshot (a project save into a recovery file) taken
when the journal grows or a timer fires. Each base carries a save id; the journal names the save id it
builds on, so after a crash between writing a new base and starting a new journal, recovery sees the
mismatch and uses the newer base alone (it already holds every journalled operation).

Files, for a project `dir/name.studio`: `dir/.name.studio.journal` and `dir/.name.studio.snapshot`;
for an unsaved document the same two files live in `<data dir>/recovery/untitled-<id>.*`.
A clean close deletes both. `find_recovery` finds what a crash left; `recover` rebuilds it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QTimer, Signal

from backend.errors import StudioError
from studio.archive import ProjectError
from studio.atomic import atomic_write, fsync_directory
from studio.document import Command, Document
from studio.gallery import Gallery, Result
from studio.journal_records import apply_record, decode_all, encode, operation_record
from studio.project import ProjectData, load_project, project_data, result_to_json, save_project
from studio.recipe import recipe_from_dict

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second running studio may offer the first one's work
    fcntl = None  # type: ignore[assignment]

JOURNAL_SUFFIX = ".journal"
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_EVERY_MS = 5 * 60 * 1000
MAX_JOURNAL_BYTES = 256 * 1024 * 1024
# A snapshot is a full project save on the GUI thread (a second or more for a big canvas): the timer takes
# one only when the journal has grown enough that replaying it would be slow, not every few minutes.
TIMER_MIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SaveMark:
    """Where a save began in the journal: the id the file will carry and the journal's length then."""

    save_id: str
    generation: int
    offset: int | None


def journal_path(project: str | Path | None, data_dir: str | Path) -> Path:
    """Where the journal of a project (or of a new unsaved document) lives."""
    if project is not None:
        project = Path(project).absolute()
        return project.parent / f".{project.name}{JOURNAL_SUFFIX}"
    return Path(data_dir) / "recovery" / f"untitled-{uuid.uuid4().hex[:12]}{JOURNAL_SUFFIX}"


def snapshot_path(journal: Path) -> Path:
    """The recovery snapshot that belongs to a journal."""
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)] + SNAPSHOT_SUFFIX)


class Journal(QObject):
    """Writes the recovery journal of one document, gallery and prompt history."""

    failed = Signal(str)  # the journal could not be written: recovery is off until the next save

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
        self._fd: int | None = None
        self._records = 0
        self._generation = 0  # counts starts: a save mark from before a restart no longer applies
        self._paused = 0
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
    ) -> None:
        """Begin journalling the document as it is now.

        With the `save_id` of the project file the document was just opened from or saved to, the
        journal builds on that file; otherwise it first writes a snapshot of the current state.
        `unsaved_work` says that state is worth offering after a crash even if nothing else happens
        (a restored or compacted document; not a fresh blank canvas). `tail` holds records of operations
        done since that file was written (a save that ran in the background), replayed on top of it.
        """
        old = self.path
        self._close_fd()
        self.project = Path(project).absolute() if project is not None else None
        untitled = old is not None and old.parent == self.data_dir / "recovery"
        if self.project is not None or not untitled:  # an untitled journal keeps its file when compacted
            self.path = journal_path(self.project, self.data_dir)
        assert self.path is not None
        snap = snapshot_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if save_id is not None and self.project is not None:
                kind, base = "project", self.project
            else:
                kind, base = "snapshot", snap
                save_id = save_project(snap, self._data())
            header = {
                "op": "base",
                "version": 1,
                "kind": kind,
                "base": str(base),
                "save_id": save_id,
                "project": str(self.project) if self.project else None,
                "unsaved_work": bool(unsaved_work),
                "started": time.time(),
            }
            # Replacing the journal atomically switches from the old base to the new one in one step.
            atomic_write(self.path, encode(header) + tail)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            _lock(self._fd)
        except (OSError, StudioError) as exc:
            self._fail(exc)
            return
        self._records = len(decode_all(tail)[0]) if tail else 0
        self._generation += 1
        if kind == "project":
            _remove(snap)
        if old is not None and old != self.path:
            _remove(old, snapshot_path(old))
        self._timer.start()

    def begin_save(self) -> SaveMark:
        """A save is starting: note it in the journal (with the id the file will carry) and return the
        mark `note_saved` needs. Operations after the mark are not in that file; should the process die
        after the file is written but before `note_saved`, recovery replays them from this record."""
        mark = SaveMark(uuid.uuid4().hex, self._generation, None)
        self._append({"op": "saving", "save_id": mark.save_id}, [])
        if self._fd is None:
            return mark
        try:
            return SaveMark(mark.save_id, self._generation, os.fstat(self._fd).st_size)
        except OSError:
            return mark

    def note_saved(self, project: str | Path, save_id: str, since: SaveMark | None = None) -> None:
        """The document was saved to `project`: rebase the journal on that file (compacts it).

        `since` is the mark of a save that ran while the person kept working: the operations journalled
        after it carry over to the new journal, on top of the file."""
        if since is None:
            self.start(project, save_id)
            return
        tail = self._tail(since)
        if tail is None:  # the journal restarted during the save: take a snapshot of what is there now
            self.start(project, None, unsaved_work=True)
        else:
            self.start(project, save_id, tail=tail)

    def _tail(self, mark: SaveMark) -> bytes | None:
        if (
            self._fd is None
            or self.path is None
            or mark.offset is None
            or mark.generation != self._generation
        ):
            return None
        try:
            with open(self.path, "rb") as handle:
                handle.seek(mark.offset)
                return handle.read()
        except OSError:
            return None

    def compact(self) -> None:
        """Write a snapshot of the current state and start an empty journal on it."""
        if self.path is not None:
            self.start(self.project, None, unsaved_work=True)

    def close(self) -> None:
        """A clean close: stop journalling and delete the journal and its snapshot."""
        self._timer.stop()
        self._close_fd()
        if self.path is not None:
            _remove(self.path, snapshot_path(self.path))
        self.path = None

    def abandon(self) -> None:
        """Stop writing and let go of the journal without deleting it: exactly what a crash leaves behind."""
        self._timer.stop()
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

    # -- records ---------------------------------------------------------------------------------------
    def record_history(self, items: Sequence[str] | None = None) -> None:
        """Record the prompt history (call after it changes)."""
        self._append({"op": "history", "items": list(items if items is not None else self.history())}, [])

    def _on_operation(self, what: str, command: Command) -> None:
        if self._paused or self._fd is None:
            return
        record = operation_record(what, command, self.document)
        if record is None:  # an operation this journal cannot describe: a snapshot holds it exactly
            self.compact()
        else:
            self._append(*record)

    def _on_active_changed(self, layer_id: str) -> None:
        # A few dozen bytes: choosing a layer is no undo step, but recovery should paint where the person was.
        self._append({"op": "active", "active": layer_id}, [])

    def _on_changed(self, kind: str) -> None:
        if kind == "reset" and not self._paused and self._fd is not None:
            self.compact()

    def _on_gallery_reset(self) -> None:
        if not self._paused and self._fd is not None:
            self.compact()

    def _on_result_added(self, result: Result) -> None:
        arrays = [result.image] + ([result.attribution] if result.attribution is not None else [])
        self._append({"op": "add_result", "result": result_to_json(result)}, arrays)

    def _on_result_removed(self, result_id: str) -> None:
        self._append({"op": "remove_result", "id": result_id}, [])

    def _append(self, header: dict, arrays: list[np.ndarray]) -> None:
        if self._paused or self._fd is None:
            return
        data = encode(header, arrays)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)  # durable before the next operation can start
        except OSError as exc:
            self._fail(exc)
            return
        self._records += 1
        if os.fstat(self._fd).st_size > self.max_bytes:
            self.compact()

    def _on_timer(self) -> None:
        if self._fd is not None and self._records and os.fstat(self._fd).st_size > self.timer_min_bytes:
            self.compact()

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


def _lock(fd: int) -> None:
    """Hold an exclusive lock on a live journal; the OS drops it when the process ends, however it ends."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _in_use(path: Path) -> bool:
    """True when a running process holds the journal's lock (so it is no crash leftover)."""
    if fcntl is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing also releases the lock if we took it
    return False


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    if paths:
        fsync_directory(paths[0].parent)


# -------------------------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class Recovery:
    """A journal a crash left behind: where it is, which project it belongs to, when it was last written."""

    journal: Path
    project: Path | None
    modified: float
    operations: int

    @property
    def title(self) -> str:
        """A name to show the person: the project's file name, or "Untitled"."""
        return self.project.name if self.project else "Untitled"


def find_recovery(data_dir: str | Path, projects: Sequence[str | Path] = ()) -> Recovery | None:
    """The newest journal with work to restore: unsaved documents in `data_dir`, or beside `projects`."""
    candidates = sorted((Path(data_dir) / "recovery").glob(f"untitled-*{JOURNAL_SUFFIX}"))
    candidates += [journal_path(p, data_dir) for p in projects]
    found: list[Recovery] = []
    for path in candidates:
        try:
            if _in_use(path):
                continue  # another running studio is writing it: not a crash
            records, _ = decode_all(path.read_bytes())
            modified = path.stat().st_mtime
        except OSError:
            continue
        if not records or records[0][0].get("op") != "base":
            continue
        base = records[0][0]
        # Choosing another layer (or starting a save) alone is no work worth offering to restore.
        operations = sum(1 for header, _ in records[1:] if header.get("op") not in ("active", "saving"))
        if operations or base.get("unsaved_work"):
            project = base.get("project")
            found.append(Recovery(path, Path(project) if project else None, modified, operations))
    return max(found, key=lambda r: r.modified, default=None)


def recover(recovery: Recovery | str | Path) -> ProjectData:
    """Rebuild the document, gallery and prompt history exactly as after the last finished operation."""
    path = recovery.journal if isinstance(recovery, Recovery) else Path(recovery)
    try:
        records, _torn = decode_all(path.read_bytes())
    except OSError as exc:
        raise ProjectError(f"cannot read the recovery journal {path.name} ({exc.strerror or exc})") from None
    if not records or records[0][0].get("op") != "base":
        raise ProjectError(f"{path.name} is not a recovery journal")
    base = records[0][0]
    data = load_project(_base_file(path, base))
    if data.save_id != base.get("save_id"):
        # The base file was rewritten after this journal began: by a save this journal saw start (replay
        # what came after it), or by a compaction that already holds every record.
        began = [
            i
            for i, (header, _) in enumerate(records)
            if header.get("op") == "saving" and header.get("save_id") == data.save_id
        ]
        if not began:
            return data
        records = records[began[0] :]
    doc = Document(data.width, data.height, [layer.copy() for layer in data.layers])
    doc.mask = data.mask.copy()
    doc.active_id = data.active_id or doc.active_id
    results = {r.id: r for r in data.results}
    history = list(data.prompt_history)
    for record in records[1:]:
        apply_record(doc, results, history, record)
    return ProjectData(
        doc.width,
        doc.height,
        doc.layers,
        doc.mask,
        doc.active_id,
        [_result(v) for v in results.values()],
        history,
        save_id="",
        notes=data.notes,
    )


def _base_file(journal: Path, base: dict) -> Path:
    # A snapshot is found beside its journal even if the folder was moved; a project by its path.
    return snapshot_path(journal) if base.get("kind") == "snapshot" else Path(str(base.get("base")))


def _result(value: Result | tuple) -> Result:
    if isinstance(value, Result):
        return value
    entry, arrays = value
    recipe = recipe_from_dict(entry["recipe"])
    return Result(
        image=arrays[0],
        request=recipe.request,
        extras=recipe.extras,
        parents=tuple(entry.get("parents", ())),
        painted=bool(entry.get("painted", False)),
        id=str(entry["id"]),
        created=float(entry.get("created", 0.0)),
        attribution=arrays[1] if len(arrays) > 1 else None,
        group=str(entry["group"]) if isinstance(entry.get("group"), str) else None,
        cells=tuple(str(c) for c in entry.get("cells", ()) if isinstance(c, str)),
    )


def discard_recovery(recovery: Recovery) -> None:
    """Delete a journal (and its snapshot) the person chose not to restore."""
    _remove(recovery.journal, snapshot_path(recovery.journal))
