"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of either.

Every writer in the project that replaces a file a person cares about (projects, recovery snapshots,
exported PNG and ORA files, settings it owns) goes through `atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".part"
# The process umask, read once at import (reading it means setting it, which is not thread-safe later).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write `content` (bytes, or a function that writes to a binary file) to `path` atomically.

    The data goes to a temporary file beside the target (same filesystem, so the rename is atomic), is
    flushed and fsynced, renamed over the target with `os.replace`, and the directory is fsynced so the
    rename itself survives a power cut. On any failure the temporary file is removed and the target is
    left exactly as it was. Returns the target path.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=directory)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file private (0600); keep the old file's mode, or what open() would give.
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, bytes | bytearray | memoryview):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(directory)
    return target


def fsync_directory(directory: str | Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk; a no-op where the OS cannot do it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems (and Windows) refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(dir_fd)


def remove_stale_temps(path: str | Path) -> int:
    """Delete temporary files a killed writer left beside `path`; returns how many were removed."""
    target = Path(path)
    removed = 0
    for stale in target.parent.glob(f".{target.name}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed
