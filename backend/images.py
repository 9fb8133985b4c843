"""Immutable pictures for requests, and safe image file reading."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from backend.errors import ImageError

# Refuse images whose declared size would need more than this many pixels (a decompression bomb).
MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class Picture:
    """A read-only uint8 image (H×W×3 RGB or H×W mask) that compares and hashes by its pixels."""

    pixels: np.ndarray
    _digest: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        arr = np.ascontiguousarray(self.pixels, dtype=np.uint8)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
            raise ImageError(f"expected an H×W or H×W×3 image, got shape {arr.shape}")
        arr = arr.copy()
        arr.setflags(write=False)
        object.__setattr__(self, "pixels", arr)
        h = hashlib.sha256(str(arr.shape).encode())
        h.update(arr.tobytes())
        object.__setattr__(self, "_digest", h.hexdigest())

    @property
    def digest(self) -> str:
        """SHA-256 of shape and pixels: a stable id for recipes and lineage."""
        return self._digest

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_mask(self) -> bool:
        return self.pixels.ndim == 2

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Picture) and other._digest == self._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"Picture({self.width}x{self.height}{' mask' if self.is_mask else ''}, {self._digest[:12]})"

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.pixels, "L" if self.is_mask else "RGB")

    def to_png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.to_pil().save(buf, format="PNG")
        return buf.getvalue()

    @classmethod
    def from_pil(cls, image: Image.Image, mask: bool = False) -> Picture:
        """RGB picture (or an L mask) from any PIL image: alpha composited on white, 16-bit scaled down."""
        return cls(pil_to_array(image, mask=mask))

    @classmethod
    def from_png_bytes(cls, data: bytes, mask: bool = False) -> Picture:
        return cls.from_pil(open_image(io.BytesIO(data)), mask=mask)


def pil_to_array(image: Image.Image, mask: bool = False) -> np.ndarray:
    """uint8 RGB (or L for a mask) array from a PIL image of any mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if mask:
            return np.asarray(rgba.convert("L"), dtype=np.uint8).copy()
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L" if mask else "RGB"), dtype=np.uint8).copy()


def open_image(source: str | Path | io.BytesIO, notes: list[str] | None = None) -> Image.Image:
    """Open and fully decode an image, refusing bombs and turning every decoder failure into ImageError.

    A PNG whose text chunks inflate past Pillow's limits (1 MB a chunk, 64 MB in all) is opened without
    those chunks rather than refused: the pixels are what the person wants. Each skipped chunk is
    described in `notes` when given (`studio-cli info` prints them).
    """
    name = str(source) if not isinstance(source, io.BytesIO) else "image data"
    try:
        return _decode(source, name)
    except _TextTooLarge:
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        kept, skipped = without_large_text(data)
        if notes is not None:
            notes.extend(skipped)
        try:
            return _decode(io.BytesIO(kept), name)
        except _TextTooLarge as exc:
            raise ImageError(f"{name}: not a readable image ({exc})") from None


class _TextTooLarge(Exception):
    """Pillow refused a PNG because of its text chunks, not its pixels."""


def _decode(source: str | Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: {w}×{h} is too large to open (limit {MAX_PIXELS} pixels)")
            image.load()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: declared size is too large to open safely") from None
    except ValueError as exc:
        if "MAX_TEXT_CHUNK" in str(exc) or "MAX_TEXT_MEMORY" in str(exc):
            raise _TextTooLarge(str(exc)) from None
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return image


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_large_text(data: bytes) -> tuple[bytes, list[str]]:
    """A PNG's bytes without the text chunks Pillow would refuse, and a note for each one left out.

    A compressed chunk (zTXt, compressed iTXt) is left out when it inflates past MAX_TEXT_CHUNK (1 MB),
    any text chunk once the text kept would pass half of MAX_TEXT_MEMORY. Inflating stops at the limit.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return data, []
    out, skipped, kept_text, pos = [data[:8]], [], 0, 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, size = _text_size(kind, data[pos + 8 : pos + 8 + length])
            if size > PngImagePlugin.MAX_TEXT_CHUNK or kept_text + size > PngImagePlugin.MAX_TEXT_MEMORY // 2:
                limit = PngImagePlugin.MAX_TEXT_CHUNK // 2**20
                skipped.append(f"skipped the text chunk {keyword!r}: its text is larger than {limit} MB")
                pos = end
                continue
            kept_text += size
        out.append(data[pos:end])
        pos = end
    return b"".join(out), skipped


def _text_size(kind: bytes, body: bytes) -> tuple[str, int]:
    """A text chunk's keyword and the size of its text once inflated (counted up to just past 1 MB)."""
    keyword, _, rest = body.partition(b"\0")
    compressed = kind == b"zTXt" or (kind == b"iTXt" and rest[:1] == b"\1")
    if not compressed:
        return keyword.decode("latin-1"), len(rest)
    # zTXt: method, text; iTXt: flag, method, language\0, translated keyword\0, text
    stream = rest[1:] if kind == b"zTXt" else rest[2:].split(b"\0", 2)[-1]
    inflater = zlib.decompressobj()
    try:
        size = len(inflater.decompress(stream, PngImagePlugin.MAX_TEXT_CHUNK + 1))
    except zlib.error:
        size = 0  # a broken chunk: Pillow reads it as empty text, no cost
    return keyword.decode("latin-1"), size


def load_picture(path: str | Path, mask: bool = False) -> Picture:
    """Read an image file as a Picture (RGB, or L for a mask)."""
    return Picture.from_pil(open_image(path), mask=mask)
