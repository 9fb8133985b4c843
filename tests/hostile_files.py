"""Builders of hostile `.studio`, `.ora` and PNG files for tests/test_hostile_inputs.py and the fuzzer.

Each builder writes a small file that asks for much more than it holds (or lies about what it holds);
none of them allocates what the file asks for while building it.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from backend.request import Request
from studio.archive import png_bytes
from studio.document import Document, Layer
from studio.gallery import Gallery, Result
from studio.project import save_project


def chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC."""
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring an enormous image, with almost no data (nothing big is allocated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def blank_png(width: int, height: int) -> bytes:
    """A fully transparent RGBA PNG of any size, compressed in one pass without the pixels in memory."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    row = b"\0" * (1 + 4 * width)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def good_project(path: Path, width: int = 24, height: int = 16) -> Path:
    """A small, valid project: two layers, one gallery result, one prompt (fixed ids: stable messages)."""
    white = np.full((height, width, 4), 255, np.uint8)
    doc = Document(width, height, [Layer("Background", white, id="bg"), Layer("ink", white // 2, id="ink")])
    gallery = Gallery()
    request = Request(prompt="p", width=width, height=height)
    gallery.add(Result(np.zeros((height, width, 3), np.uint8), request, id="r1", created=1.0))
    save_project(path, doc, gallery, ["p"])
    return path


def members_of(path: Path) -> dict[str, bytes]:
    """Every member of a zip, by name, in order."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path: Path, members: Iterable[tuple[str, bytes]], deflate: bool = True) -> Path:
    """A zip of these members, in this order (duplicates allowed: zipfile only warns)."""
    import warnings

    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of some tests
        with zipfile.ZipFile(path, "w", method) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def rewrite(
    src: Path,
    dst: Path,
    change: Callable[[dict[str, Any]], object] | None = None,
    drop: Iterable[str] = (),
    extra: Iterable[tuple[str, bytes]] = (),
    replace: dict[str, bytes] | None = None,
) -> Path:
    """Copy a project with its manifest changed, members dropped, replaced or added."""
    members = members_of(src)
    manifest = json.loads(members["manifest.json"])
    if change:
        change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    members.update(replace or {})
    drop = set(drop)
    return write_zip(dst, [*((n, d) for n, d in members.items() if n not in drop), *extra])


def setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A manifest change that sets a dotted path (list indices as numbers) to `value`."""

    def change(m: dict[str, Any]) -> None:
        node: Any = m
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def trailing_png(width: int = 24, height: int = 16, trailing: int = 500 * 2**20) -> bytes:
    """A valid opaque PNG followed by `trailing` zero bytes after its IEND (a zip deflates them to ~0.1%)."""
    return png_bytes(np.full((height, width, 4), 200, np.uint8)) + bytes(trailing)


def lying_npy(shape: tuple[int, ...] = (1 << 20, 1 << 20, 2), dtype: str = "<f4") -> bytes:
    """An .npy header declaring `shape` (8 TiB by default) with almost no data after it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def ora(
    path: Path,
    width: int,
    height: int,
    layers: Iterable[tuple[str, bytes]],
    attributes: Iterable[dict[str, str]] | None = None,
    extra: Iterable[tuple[str, bytes]] = (),
) -> Path:
    """An OpenRaster file with these layer PNGs (top first) on a `width`×`height` canvas."""
    layers = list(layers)
    attributes = list(attributes or [{} for _ in layers])
    stack = "".join(
        f'<layer name="l{i}" src="{name}" ' + " ".join(f'{k}="{v}"' for k, v in attrs.items()) + "/>"
        for i, ((name, _), attrs) in enumerate(zip(layers, attributes, strict=True))
    )
    xml = (
        f'<?xml version="1.0"?><image version="0.0.5" w="{width}" h="{height}"><stack>{stack}</stack></image>'
    )
    members = [("mimetype", b"image/openraster"), ("stack.xml", xml.encode()), *layers, *extra]
    return write_zip(path, members)
