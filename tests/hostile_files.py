"""Builders of hostile `.studio`, `.ora` and PNG files for tests/test_hostile_inputs.py and the fuzzer.

Each builder writes a small file that asks for much more than it holds (or lies about what it holds);
none of them allocates what the file asks for while building it.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.request import Request
from studio.document import Document
from studio.files.archive import png_bytes
from studio.files.project import save_project
from studio.gallery import Gallery, Result
from studio.layers import Layer


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


@functools.cache
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


@dataclass(frozen=True)
class Deflated:
    """A zip member's content already deflated (raw stream), with the CRC and size of what it inflates to."""

    data: bytes
    crc: int
    size: int

    @classmethod
    def of(cls, content: bytes) -> Deflated:
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        return cls(packer.compress(content) + packer.flush(), zlib.crc32(content), len(content))


def write_zip(path: Path, members: Iterable[tuple[str, bytes | Deflated]]) -> Path:
    """A zip of these members, in this order, deflated; duplicate names are written as given.

    Written by hand (local headers, central directory, end record) so that a member can be a
    ready-made `Deflated` stream: deflating 500 MB of zeros for every test would take seconds each.
    """
    out = bytearray()
    directory = bytearray()
    count = 0
    for name, content in members:
        member = content if isinstance(content, Deflated) else Deflated.of(content)
        raw = name.encode("utf-8")
        fields = (8, 0, 0x21, member.crc, len(member.data), member.size, len(raw))  # deflate, 1980-01-01
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0x800, *fields, 0, 0, 0, 0, 0, len(out)
        )
        directory += raw
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0x800, *fields, 0) + raw + member.data
        count += 1
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(out), 0)
    path.write_bytes(bytes(out + directory + end))
    return path


def rewrite(
    src: Path,
    dst: Path,
    change: Callable[[dict[str, Any]], object] | None = None,
    drop: Iterable[str] = (),
    extra: Iterable[tuple[str, bytes | Deflated]] = (),
    replace: dict[str, bytes | Deflated] | None = None,
) -> Path:
    """Copy a project with its manifest changed, members dropped, replaced or added."""
    members: dict[str, bytes | Deflated] = dict(members_of(src))
    manifest = json.loads(members_of(src)["manifest.json"])
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


def repeated(head: bytes, unit: bytes, count: int, tail: bytes = b"") -> Deflated:
    """`head`, then `unit` `count` times, then `tail`, deflated without deflating every repeat.

    After a full flush a deflate stream starts afresh, so every repeat of the unit deflates to the same
    bytes: one is made and copied (the stream zlib itself would write, in a fraction of the time).
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    middle = packer.compress(unit) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.compress(tail) + packer.flush(zlib.Z_FINISH)
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(unit, crc)
    crc = zlib.crc32(tail, crc)
    return Deflated(start + middle * count + end, crc, len(head) + count * len(unit) + len(tail))


@functools.cache
def trailing_png(width: int = 24, height: int = 16, megabytes: int = 500) -> Deflated:
    """A valid opaque PNG followed by `megabytes` MB of zeros after its IEND (deflated to about 0.5 MB)."""
    return repeated(png_bytes(np.full((height, width, 4), 200, np.uint8)), bytes(1 << 20), megabytes)


@functools.cache
def history_manifest(good: Path, prompts: int = 240_000, length: int = 1000) -> Deflated:
    """`good`'s manifest with a prompt history of `prompts` prompts of `length` characters (240 MB)."""
    manifest = json.loads(members_of(good)["manifest.json"])
    manifest["prompt_history"] = ["@"]
    head, tail = json.dumps(manifest).encode().split(b'"@"')
    block = 240  # prompts per deflated unit: one full flush per unit costs a few bytes
    unit = (b'"' + b"x" * length + b'",') * block
    return repeated(head + unit * (prompts % block), unit, prompts // block - 1, unit[:-1] + tail)


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
    extra: Iterable[tuple[str, bytes | Deflated]] = (),
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


@functools.cache
def png_with_chunk(tag: bytes, prefix: bytes, megabytes: int, width: int = 24, height: int = 16) -> Deflated:
    """A valid opaque PNG with one more chunk before its IEND: `prefix` and `megabytes` MB of zeros."""
    png = png_bytes(np.full((height, width, 4), 200, np.uint8))
    zeros = bytes(1 << 20)
    crc = zlib.crc32(tag + prefix)
    for _ in range(megabytes):
        crc = zlib.crc32(zeros, crc)
    head = png[:-12] + struct.pack(">I", len(prefix) + megabytes * len(zeros)) + tag + prefix
    return repeated(head, zeros, megabytes, struct.pack(">I", crc) + png[-12:])


@dataclass(frozen=True)
class Case:
    """One hostile file: what it is, how to build it, how to open it and what must happen."""

    label: str
    expect: str  # "refused" or "opened"
    match: str  # a piece of the refusal message, or of what opening it says
    build: Callable[[Path, Path], object]  # (where, a good project to start from)
    kind: str = "studio"  # or "ora" (tests/hostile_child.py)

    def make(self, folder: Path) -> Path:
        """Build the file in `folder` (with a good project beside it) and return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        good = folder / "good.studio"
        if not good.exists():
            good_project(good)
        path = folder / f"case.{self.kind}"
        self.build(path, good)
        return path


_MANY = [{"id": f"l{i}", "name": f"l{i}", "image": f"layers/{i}.png"} for i in range(7)]
_BIG = [{"id": f"b{i}", "name": f"b{i}", "image": f"layers/big{i}.png"} for i in range(30)]
_WHITE = png_bytes(np.full((16, 24, 4), 255, np.uint8))

# Issue 9's small files that cost far more than they hold, and files that lie to get past the checks.
COSTLY = [
    Case(
        "layer PNG followed by 500 MB of zeros after its IEND",
        "refused",
        "after the end of its image",
        lambda p, good: rewrite(good, p, replace={"layers/bg.png": trailing_png()}),
    ),
    Case(
        "7 layer PNGs, each followed by 500 MB of zeros",
        "refused",
        "inflate to",
        lambda p, good: rewrite(
            good, p, lambda m: m.update(layers=_MANY), extra=[(e["image"], trailing_png()) for e in _MANY]
        ),
    ),
    Case(
        "manifest inflating to 240 MB: a history of 240,000 prompts",
        "refused",
        "manifest inflates",
        lambda p, good: rewrite(good, p, replace={"manifest.json": history_manifest(good)}),
    ),
    Case(
        "manifest of 4 MB of empty JSON objects (the worst JSON the free allowance admits)",
        "refused",
        "the manifest has the wrong format",
        lambda p, good: rewrite(
            good, p, replace={"manifest.json": repeated(b"[", b"{}," * 4000, 349, b"{}]")}
        ),
    ),
    Case(
        "history of 5,000 different prompts",
        "opened",
        "kept the 1000 newest of the 5000 prompts",
        lambda p, good: rewrite(good, p, setter("prompt_history", [f"prompt {i}" for i in range(5000)])),
    ),
    Case(
        "layer PNG with 8 MB more image data than its 24×16 pixels need",
        "refused",
        "more image data than a 24×16 image can need",
        lambda p, good: rewrite(good, p, replace={"layers/bg.png": png_with_chunk(b"IDAT", b"", 8)}),
    ),
    Case(
        "layer PNG carrying a 100 MB text chunk",
        "refused",
        "besides its pixels",
        lambda p, good: rewrite(good, p, replace={"layers/bg.png": png_with_chunk(b"tEXt", b"k\0", 100)}),
    ),
    Case(
        "attribution .npy whose header declares 8 TiB",
        "refused",
        "has shape",
        lambda p, good: rewrite(
            good,
            p,
            setter("gallery.0.attribution", "gallery/r1.attr.npy"),
            extra=[("gallery/r1.attr.npy", lying_npy())],
        ),
    ),
    Case(
        '`"active_layer": [1]` (a list, not an id)',
        "opened",
        "24×16, 2 layers",
        lambda p, good: rewrite(good, p, setter("active_layer", [1])),
    ),
    Case(
        "two entries named layers/bg.png (readers disagree on which)",
        "refused",
        "two entries named 'layers/bg.png'",
        lambda p, good: write_zip(p, [*members_of(good).items(), ("layers/bg.png", blank_png(24, 16))]),
    ),
    Case(
        "30 different layer images of 8000² in a few MB (decoded-size bomb)",
        "refused",
        "GiB of memory once decoded",
        lambda p, good: rewrite(
            good,
            p,
            lambda m: m.update(canvas={"width": 8000, "height": 8000}, layers=_BIG),
            extra=[(e["image"], blank_png(8000, 8000)) for e in _BIG],
        ),
    ),
    Case(
        "OpenRaster: 30 different layer images of 8000² in a few MB",
        "refused",
        "GiB of memory once decoded",
        lambda p, good: ora(p, 8000, 8000, [(f"data/{i}.png", blank_png(8000, 8000)) for i in range(30)]),
        "ora",
    ),
    Case(
        "OpenRaster: two entries named data/a.png",
        "refused",
        "two entries named 'data/a.png'",
        lambda p, good: ora(p, 24, 16, [("data/a.png", _WHITE)], extra=[("data/a.png", blank_png(24, 16))]),
        "ora",
    ),
    Case(
        "OpenRaster: layer PNG followed by 500 MB of zeros",
        "refused",
        "after the end of its image",
        lambda p, good: ora(p, 24, 16, [("data/a.png", trailing_png())]),
        "ora",
    ),
]
