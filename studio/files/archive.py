"""Zip archives of PNG images, read and written safely: shared by `.studio` projects and OpenRaster files.

Reading never extracts anything to disk: members are read into memory by name, after every name in the
archive has been checked (no absolute paths, no `..`, no drive letters or backslashes, no name twice) and
every declared size has been checked against a limit, so a hostile archive can neither write outside its
place nor exhaust memory. The limits are on what the file *costs*, not only on each entry: what all its
entries declare may not exceed 1 GiB or 20 times the file's own size (zipfile never inflates past what an
entry declares), and a PNG member is read chunk by chunk and may hold no more compressed pixel data than
its own width and height can need, nor much after its end (IEND).
Images decode through `backend.images.open_image`, which refuses decompression bombs.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from backend.errors import ImageError, StudioError
from backend.images import open_image

MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 512 * 1024 * 1024  # declared uncompressed size of one member
MAX_TOTAL_BYTES = 4 * 1024 * 1024 * 1024  # declared uncompressed size of the whole archive
# Decoded pixels of all images in one archive: a blank PNG of 8000² compresses to a few kB, so many
# small members could otherwise ask for hundreds of gigabytes once decoded.
MAX_DECODED_BYTES = 6 * 1024 * 1024 * 1024
DECODE_BAND_PIXELS = 1 << 20  # rows converted from the decoded image to the array at a time
# What all entries may declare together: at least 1 GiB, more only for a file that is itself large (PNG
# members are stored, not deflated, so a real project inflates to little more than its own size).
MIN_INFLATE_BUDGET = 1024 * 1024 * 1024
INFLATE_RATIO = 20
MAX_PNG_EXTRA_BYTES = 16 * 1024 * 1024  # a PNG member's chunks besides its pixels (profiles, text)
MAX_PNG_TRAILING = 64 * 1024  # after IEND; tools write nothing there, a little junk is ignored
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Letters of any script, digits, spaces and punctuation (GIMP names ORA members after layers), but no
# control characters, backslashes or colons (Windows separators and drive letters).
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\:]")


class ProjectError(StudioError):
    """A project or layered-image file that cannot be opened or saved; the message says why."""


@contextmanager
def loading(label: str) -> Iterator[None]:
    """Turn any failure while reading a file into a ProjectError with a one-line reason.

    The loaders check everything they know to check and raise ProjectError `from None`; this is the
    safety net under them (an exception they did not foresee, or memory running out), so the window and
    the CLI never see anything else. It chains the original (`from exc`) so tests can tell the two apart.
    """
    try:
        yield
    except StudioError:
        raise
    except MemoryError:
        raise ProjectError(f"{label}: not enough memory to open it") from MemoryError()
    except RecursionError as exc:
        raise ProjectError(f"{label}: nested too deeply to read") from exc
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ProjectError(f"{label}: cannot be read ({exc.__class__.__name__}: {reason})") from exc


def is_safe_member_name(name: str) -> bool:
    """True for a plain relative name such as `layers/ab12.png` (no `..`, no absolute path, no oddities)."""
    if not name or len(name) > 1024 or _BAD_CHARS.search(name):
        return False
    return all(part.strip() not in ("", ".", "..") for part in name.split("/"))


def open_archive(path: str | Path, what: str) -> zipfile.ZipFile:
    """Open a zip for reading after checking every member's name and declared size."""
    label = Path(path).name
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ProjectError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ProjectError(f"{label}: is a folder, not a {what}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ProjectError(f"{label}: not a {what} (not a zip archive: {exc})") from None
    try:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ProjectError(f"{label}: holds {len(infos)} entries, more than a {what} ever needs")
        names: set[str] = set()
        for info in infos:
            # Two entries of one name: this reader would take the last and others the first, so two
            # programs would show different content for the same file.
            if info.filename in names:
                raise ProjectError(f"{label}: holds two entries named {info.filename!r}; refusing it")
            names.add(info.filename)
        total = 0
        for info in infos:
            if info.filename.endswith("/"):  # a folder entry (ZipInfo.is_dir fails on an empty name)
                continue
            if not is_safe_member_name(info.filename):
                raise ProjectError(f"{label}: refusing an entry with an unsafe name: {info.filename!r}")
            if info.file_size > MAX_MEMBER_BYTES:
                raise ProjectError(
                    f"{label}: entry {info.filename!r} declares {info.file_size} bytes; too large"
                )
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ProjectError(f"{label}: declares {total} bytes of content; too large to open safely")
        file_size = Path(path).stat().st_size
        if total > max(MIN_INFLATE_BUDGET, INFLATE_RATIO * file_size):
            raise ProjectError(
                f"{label}: its {file_size} bytes inflate to {total}; far more than a {what} holds"
            )
    except BaseException:
        archive.close()
        raise
    return archive


def _member_info(archive: zipfile.ZipFile, name: str) -> tuple[str, zipfile.ZipInfo]:
    """The archive's file name (for messages) and the entry a member name refers to; refuses a name that
    could point outside the archive and a missing entry."""
    label = Path(archive.filename or "archive").name
    if not is_safe_member_name(name):
        raise ProjectError(f"{label}: refers to an entry with an unsafe name: {name!r}")
    try:
        return label, archive.getinfo(name)
    except KeyError:
        raise ProjectError(f"{label}: the entry {name!r} is missing; the file is incomplete") from None


def read_member(archive: zipfile.ZipFile, name: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of one member, read in memory; refuses a missing member or one larger than `limit`."""
    label, info = _member_info(archive, name)
    if info.file_size > limit:
        raise ProjectError(f"{label}: entry {name!r} declares {info.file_size} bytes; too large")
    with _member(archive, name) as member:
        # Read one byte past the limit so a header that lies about the size is still caught.
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ProjectError(f"{label}: entry {name!r} is larger than it declares")
    return data


@contextmanager
def _member(archive: zipfile.ZipFile, name: str) -> Iterator[BinaryIO]:
    """An open member whose damage (bad CRC, broken deflate stream) becomes a ProjectError."""
    label = Path(archive.filename or "archive").name
    try:
        with archive.open(name) as member:
            yield member  # type: ignore[misc]
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise ProjectError(f"{label}: entry {name!r} is damaged ({exc})") from None


def png_size(archive: zipfile.ZipFile, name: str) -> tuple[int, int]:
    """Width and height a PNG member declares, from its first 33 bytes (nothing else is read)."""
    label, _ = _member_info(archive, name)
    with _member(archive, name) as member:
        return _png_header(member.read(8 + 8 + 13 + 4), f"{label}: entry {name!r}")[:2]


def _png_header(head: bytes, what: str) -> tuple[int, int, int, int, int]:
    """Width, height, bit depth, colour type and interlacing of a PNG's first 33 bytes."""
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ProjectError(f"{what} is not a PNG image")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or width == 0 or height == 0:
        raise ProjectError(f"{what} is not a PNG image (its header is invalid)")
    return width, height, depth, colour, interlace


def read_png_member(
    archive: zipfile.ZipFile,
    name: str,
    size: tuple[int, int] | None = None,
    budget: DecodeBudget | None = None,
    channels: int = 4,
    within: tuple[int, int] | None = None,
) -> bytes:
    """The bytes of a PNG member up to its IEND, read chunk by chunk so the file cannot cost more than
    its image: refused when it is not a PNG, is not `size` (or not `within`) from its header, would
    overdraw `budget` (charged `channels` bytes a pixel before its pixel data is read), holds more
    compressed pixel data than its width and height can need, more than 16 MB of other chunks, or more
    than 64 KB after IEND.
    """
    label, _ = _member_info(archive, name)

    def refuse(why: str) -> ProjectError:
        return ProjectError(f"{label}: entry {name!r} {why}")

    parts: list[bytes] = []
    with _member(archive, name) as member:

        def take(n: int) -> bytes:
            data = member.read(n)
            if len(data) < n:
                raise refuse("is truncated")
            parts.append(data)
            return data

        head = member.read(8 + 8 + 13 + 4)
        width, height, depth, colour, interlace = _png_header(head, f"{label}: entry {name!r}")
        parts.append(head)
        _check_size((width, height), size, within, f"{label}: entry {name!r}")
        if budget is not None:
            budget.spend(width, height, channels)
        raw = height * ((width * _PNG_CHANNELS[colour] * depth + 7) // 8 + 1)
        # Incompressible data stored in deflate blocks grows by 5 bytes per 64 KB; interlacing adds
        # filter bytes for its seven passes. Anything past this bound is not pixel data.
        pixel_bound = raw + raw // 100 + (8 * height if interlace else 0) + 65536
        pixels = extra = 0
        while True:
            length, kind = struct.unpack(">I4s", take(8))
            if kind == b"IDAT":
                pixels += length
                if pixels > pixel_bound:
                    raise refuse(f"holds more image data than a {width}×{height} image can need")
            else:
                extra += length
                if extra > MAX_PNG_EXTRA_BYTES:
                    raise refuse("holds more than 16 MB besides its pixels")
            take(length + 4)  # the chunk's data and CRC (Pillow checks the CRC)
            if kind == b"IEND":
                break
        if len(member.read(MAX_PNG_TRAILING + 1)) > MAX_PNG_TRAILING:
            raise refuse("holds more than 64 KB after the end of its image; refusing it")
    return b"".join(parts)


def png_bytes(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an H×W×4 RGBA, H×W×3 RGB or H×W grey uint8 array as PNG (fast compression: saves are hot)."""
    mode = {2: "L"}.get(pixels.ndim) or {3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def write_png(archive: zipfile.ZipFile, name: str, pixels: np.ndarray) -> None:
    """Store an image as a PNG member (stored, not deflated: PNG is already compressed)."""
    archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), png_bytes(pixels))


def write_text(archive: zipfile.ZipFile, name: str, text: str, compress: bool = True) -> None:
    """Store a text member (deflated unless `compress` is False, as OpenRaster's `mimetype` needs)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    archive.writestr(info, text.encode("utf-8"))


class DecodeBudget:
    """How many bytes of decoded pixels the images of one archive may still take."""

    def __init__(self, label: str, limit: int = MAX_DECODED_BYTES) -> None:
        self.label = label
        self.limit = limit
        self.left = limit

    def spend(self, width: int, height: int, channels: int) -> None:
        """Account for one image before it is decoded; ProjectError when the archive asks for too much."""
        self.left -= width * height * channels
        if self.left < 0:
            raise ProjectError(
                f"{self.label}: its images would need more than {self.limit / 2**30:.0f} GiB of memory "
                "once decoded; refusing to open it"
            )


def read_png(
    archive: zipfile.ZipFile,
    name: str,
    mode: str = "RGBA",
    size: tuple[int, int] | None = None,
    budget: DecodeBudget | None = None,
    within: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode a PNG member to a uint8 array in `mode` ("RGBA", "RGB" or "L").

    `size` demands an exact width×height, `within` at most that width and height. The size the PNG
    header declares is checked (and charged to `budget`) before anything is decoded, and the member is
    read only as far as its image goes (`read_png_member`).
    """
    label = Path(archive.filename or "archive").name
    data = read_png_member(archive, name, size, budget, len(mode), within)
    try:
        image = open_image(io.BytesIO(data))
    except ImageError as exc:
        raise ProjectError(f"{label}: entry {name!r}: {exc}") from None
    del data
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        from backend.images import pil_to_array

        image = Image.fromarray(pil_to_array(image, mask=True), "L")
    _check_size(image.size, size, within, f"{label}: entry {name!r}")
    return _to_array(image, mode)


def _check_size(
    found: tuple[int, int] | None, size: tuple[int, int] | None, within: tuple[int, int] | None, what: str
) -> None:
    if found is None:
        return
    if size is not None and found != size:
        raise ProjectError(f"{what} is {found[0]}×{found[1]}, expected {size[0]}×{size[1]}")
    if within is not None and (found[0] > within[0] or found[1] > within[1]):
        raise ProjectError(f"{what} is {found[0]}×{found[1]}, larger than the {within[0]}×{within[1]} canvas")


def _to_array(image: Image.Image, mode: str) -> np.ndarray:
    """The decoded image in `mode` as a new uint8 array, converted a band of rows at a time.

    Converting the whole image at once would hold the decoded image, its converted copy and numpy's
    intermediate bytes together (four times an 8192² layer); bands hold the image and the result only.
    """
    width, height = image.size
    shape = (height, width) if len(mode) == 1 else (height, width, len(mode))
    out = np.empty(shape, np.uint8)
    band = max(1, DECODE_BAND_PIXELS // max(width, 1))
    for top in range(0, height, band):
        part = image.crop((0, top, width, min(height, top + band)))
        out[top : top + band] = np.asarray(part if part.mode == mode else part.convert(mode))
    return out


def new_archive(handle: BinaryIO) -> zipfile.ZipFile:
    """A zip writer over an open binary file (deflate for text members; PNG members are stored)."""
    return zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
