"""Reading a recovery journal back: which journals a crash left, and the work each one holds.

A journal (see `studio.files.journal`) starts with a *base* record naming the file it builds on: the project
as it was opened or saved, a recovery snapshot, or an opened OpenRaster file. Files written while the
journal runs (a save, a snapshot written on a worker thread) are announced by a `saving` record carrying the
id the file will get, placed exactly where the state they hold was taken. So recovery takes, of the base and
those files, the one announced last whose id matches the file on disk, and replays only what follows it.

A `saving` record marked `required` stands for an operation the journal cannot describe (a canvas resize,
a merge); if its snapshot never landed, replay stops there, before records that build on that operation.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.document import MAX_CANVAS_PIXELS, Document
from studio.files.archive import ProjectError
from studio.files.atomic import fsync_directory
from studio.files.journal_records import Record, apply_record, decode_all
from studio.files.ora import import_ora
from studio.files.project import ProjectData, load_project, project_save_id, result_from_entry
from studio.gallery import Result
from studio.layers import Layer

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second running studio may offer the first one's work
    fcntl = None  # type: ignore[assignment]

JOURNAL_SUFFIX = ".journal"
SNAPSHOT_SUFFIX = ".snapshot"


def journal_path(project: str | Path | None, data_dir: str | Path) -> Path:
    """Where the journal of a project (or of a new unsaved document) lives."""
    if project is not None:
        project = Path(project).absolute()
        return project.parent / f".{project.name}{JOURNAL_SUFFIX}"
    return Path(data_dir) / "recovery" / f"untitled-{uuid.uuid4().hex[:12]}{JOURNAL_SUFFIX}"


def snapshot_path(journal: Path) -> Path:
    """The recovery snapshot that belongs to a journal."""
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)] + SNAPSHOT_SUFFIX)


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
            if in_use(path):
                continue  # another running studio is writing it: not a crash
            records, _ = decode_all(path.read_bytes())
            modified = path.stat().st_mtime
        except OSError:
            continue
        if not records or records[0][0].get("op") != "base":
            continue
        base = records[0][0]
        if base.get("follows") and not _base_landed(path, base, records):
            remove_files(path)  # it died before its first snapshot was written: there is nothing to build on
            continue
        # Choosing another layer (or starting a save) alone is no work worth offering to restore.
        operations = sum(1 for header, _ in records[1:] if header.get("op") not in ("active", "saving"))
        if operations or base.get("unsaved_work"):
            project = base.get("project")
            found.append(Recovery(path, Path(project) if project else None, modified, operations))
    return max(found, key=lambda r: r.modified, default=None)


@dataclass
class Replay:
    """How a journal rebuilds its work: the file to start from, then the records to apply to it."""

    data: ProjectData  # the starting file's contents
    records: list[Record]  # applied in order on top of `data`
    start: int  # index in the journal's records of the first one applied
    stale: bool  # the base file was replaced by a save this journal never announced: `data` is all there is
    torn: int  # bytes at the end of the journal that hold no whole record (the write a crash cut off)


def plan_replay(path: Path) -> Replay:
    """Read a journal and choose its starting file and records (see the module docstring)."""
    try:
        records, torn = decode_all(path.read_bytes())
    except OSError as exc:
        raise ProjectError(f"cannot read the recovery journal {path.name} ({exc.strerror or exc})") from None
    if not records or records[0][0].get("op") != "base":
        raise ProjectError(f"{path.name} is not a recovery journal")
    base = records[0][0]
    kind = base.get("kind")
    base_file = snapshot_path(path) if kind in ("snapshot", "blank") else Path(str(base.get("base")))
    # The files a `saving` record may announce: the base itself, the project, and the journal's snapshot.
    files = {snapshot_path(path), base_file}
    if base.get("project"):
        files.add(Path(str(base["project"])))
    landed = {file_id: file for file in files if (file_id := _save_id(file)) is not None}
    start = None
    for i, (header, _) in enumerate(records[1:], start=1):
        if header.get("op") == "saving" and header.get("save_id") in landed:
            start = i  # the newest announced file that is on disk wins
    if start is not None:
        data = load_project(landed[records[start][0]["save_id"]])
        return Replay(data, _until_missing(records[start + 1 :], landed), start + 1, False, torn)
    if base.get("follows") and not _base_landed(path, base, records):
        raise ProjectError(f"{path.name} was left before its first snapshot was written; nothing to restore")
    data = _load_base(path, base, base_file)
    if kind not in ("ora", "blank") and data.save_id != base.get("save_id"):
        # The base file was rewritten by a save this journal did not announce (an older studio's
        # compaction that already held every record): the file is all there is.
        return Replay(data, [], len(records), True, torn)
    return Replay(data, _until_missing(records[1:], landed), 1, False, torn)


def _base_landed(path: Path, base: dict, records: list[Record]) -> bool:
    """Whether the snapshot a journal was started before has reached the disk (or a later one has)."""
    landed = _save_id(snapshot_path(path))
    return landed is not None and (
        landed == base.get("save_id")
        or any(h.get("op") == "saving" and h.get("save_id") == landed for h, _ in records)
    )


def _until_missing(records: list[Record], landed: dict[str, Path]) -> list[Record]:
    """The records up to a required snapshot that never reached the disk."""
    for i, (header, _) in enumerate(records):
        if header.get("op") == "saving" and header.get("required") and header.get("save_id") not in landed:
            return records[:i]
    return records


def _save_id(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        if path.suffix.lower() != ".ora" and path.is_file():
            return project_save_id(path)
    return None


def _load_base(journal: Path, base: dict, base_file: Path) -> ProjectData:
    if base.get("kind") == "blank":
        return _blank(journal, base)
    if base.get("kind") != "ora":
        return load_project(base_file)
    # An opened OpenRaster file holds no save id: its size and time say it is still the file opened.
    try:
        stat = base_file.stat()
    except OSError as exc:
        raise ProjectError(
            f"{base_file.name}, which the recovery journal builds on, is gone ({exc})"
        ) from None
    if [stat.st_size, stat.st_mtime_ns] != base.get("stat"):
        raise ProjectError(
            f"{base_file.name} changed after it was opened; the recovery journal no longer fits it"
        )
    width, height, layers = import_ora(base_file, max_pixels=int(base.get("max_pixels") or MAX_CANVAS_PIXELS))
    ids = base.get("layers") or []
    if len(ids) != len(layers):
        raise ProjectError(f"{base_file.name} no longer holds the layers the recovery journal builds on")
    for layer, layer_id in zip(layers, ids, strict=True):
        layer.id = str(layer_id)
    return ProjectData(width, height, layers, np.zeros((height, width), np.uint8), base.get("active"))


def _blank(journal: Path, base: dict) -> ProjectData:
    """A new canvas described by the journal's header: flat-coloured layers, no mask, no gallery."""
    try:
        width, height = int(base["width"]), int(base["height"])
        if not (width > 0 and height > 0 and width * height <= MAX_CANVAS_PIXELS):
            raise ValueError(f"a {width}×{height} canvas")
        layers = []
        for meta in base["layers"]:
            w, h = int(meta["w"]), int(meta["h"])
            if not (w > 0 and h > 0 and w * h <= MAX_CANVAS_PIXELS):
                raise ValueError(f"a {w}×{h} layer")
            fill = np.array([int(v) for v in meta["fill"]], np.uint8)
            layer = Layer(str(meta["name"]), np.broadcast_to(fill, (h, w, 4)).copy(), id=str(meta["id"]))
            layer.opacity, layer.visible = float(meta["opacity"]), bool(meta["visible"])
            layer.source, layer.painted = meta.get("source"), bool(meta.get("painted", False))
            layer.x, layer.y = int(meta.get("x", 0)), int(meta.get("y", 0))
            layers.append(layer)
        history = [str(p) for p in base.get("history", [])]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ProjectError(
            f"{journal.name}: its new-canvas header does not describe a canvas ({exc})"
        ) from None
    mask = np.zeros((height, width), np.uint8)
    return ProjectData(width, height, layers, mask, base.get("active"), [], history)


def recover(recovery: Recovery | str | Path) -> ProjectData:
    """Rebuild the document, gallery and prompt history exactly as after the last finished operation."""
    path = recovery.journal if isinstance(recovery, Recovery) else Path(recovery)
    replay = plan_replay(path)
    data = replay.data
    if replay.stale:
        return data
    doc = Document(data.width, data.height, [layer.copy() for layer in data.layers])
    doc.mask = data.mask.copy()
    doc.active_id = data.active_id or doc.active_id
    results: dict[str, Result | tuple] = {r.id: r for r in data.results}
    history = list(data.prompt_history)
    for record in replay.records:
        apply_record(doc, results, history, record)
    return ProjectData(
        doc.width,
        doc.height,
        doc.layers,
        doc.mask,
        doc.active_id,
        [_result(v, path.name) for v in results.values()],
        history,
        save_id="",
        notes=data.notes,
    )


def _result(value: Result | tuple, label: str) -> Result:
    if isinstance(value, Result):
        return value
    entry, arrays = value
    image = arrays[0] if arrays else None
    if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise ProjectError(f"{label}: a gallery result in the journal has no RGB image")
    attribution = arrays[1] if len(arrays) > 1 else None
    if attribution is not None and (
        attribution.ndim not in (2, 3) or attribution.shape[:2] != image.shape[:2]
    ):
        raise ProjectError(f"{label}: a gallery result's attribution map does not fit its image")
    return result_from_entry(entry, image, attribution, "a gallery result in the journal", label)


def discard_recovery(recovery: Recovery) -> None:
    """Delete a journal (and its snapshot) the person chose not to restore."""
    remove_files(recovery.journal, snapshot_path(recovery.journal))


def in_use(path: Path) -> bool:
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


def lock(fd: int) -> None:
    """Hold an exclusive lock on a live journal; the OS drops it when the process ends, however it ends."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_files(*paths: Path) -> None:
    """Delete files that may not exist, then make the deletion durable."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
    if paths:
        fsync_directory(paths[0].parent)
