"""OpenRaster (`.ora`) export and import: the layered format Krita, GIMP and MyPaint read and write.

An .ora file is a zip: `mimetype` ("image/openraster", first and uncompressed), `stack.xml` listing the
layers top first with name, opacity and visibility, one PNG per layer under `data/`, `mergedimage.png`
(the flattened picture) and `Thumbnails/thumbnail.png` (at most 256 pixels a side). PNG-in-zip reading
and writing is shared with the project format (`studio.files.archive`), with the same safety checks.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from backend.errors import StudioError
from studio.document import MAX_CANVAS_PIXELS, Document, canvas_problem
from studio.files.archive import (
    DecodeBudget,
    ProjectError,
    loading,
    new_archive,
    open_archive,
    png_size,
    read_member,
    read_png,
    write_png,
    write_text,
)
from studio.files.atomic import atomic_write
from studio.layers import Layer, shared

MIMETYPE = "image/openraster"
MAX_STACK_BYTES = 4 * 1024 * 1024
MAX_SIDE = 16384
THUMBNAIL_SIDE = 256


def export_ora(path: str | Path, document: Document) -> None:
    """Write the document's layers as an OpenRaster file, atomically."""
    try:
        atomic_write(path, lambda handle: _write(handle, document))
    except OSError as exc:
        raise ProjectError(f"{Path(path).name}: could not export ({exc.strerror or exc})") from None


def _write(handle: BinaryIO, document: Document) -> None:
    root = ET.Element("image", {"version": "0.0.5", "w": str(document.width), "h": str(document.height)})
    stack = ET.SubElement(root, "stack")
    names = [f"data/layer{i:03d}.png" for i in range(len(document.layers))]
    for layer, src in reversed(list(zip(document.layers, names, strict=True))):  # stack.xml: top first
        ET.SubElement(
            stack,
            "layer",
            {
                "name": layer.name,
                "src": src,
                "x": str(layer.x),
                "y": str(layer.y),
                "opacity": _opacity_text(layer),
                "visibility": "visible" if layer.visible else "hidden",
                "composite-op": "svg:src-over",
            },
        )
    merged = document.composite()
    with new_archive(handle) as archive:
        write_text(archive, "mimetype", MIMETYPE, compress=False)  # first and stored, as the spec demands
        write_text(archive, "stack.xml", ET.tostring(root, encoding="unicode", xml_declaration=True))
        for layer, src in zip(document.layers, names, strict=True):
            write_png(archive, src, layer.pixels)
        write_png(archive, "mergedimage.png", merged)
        write_png(archive, "Thumbnails/thumbnail.png", _thumbnail(merged))


def _opacity_text(layer: Layer) -> str:
    opacity = float(layer.opacity)
    if not math.isfinite(opacity):  # never write opacity="nan": no reader can use it
        raise ProjectError(
            f"layer {layer.name!r} has an opacity that is not a number; set it and export again"
        )
    return f"{opacity:.4f}"


def _thumbnail(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(w, h))
    size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def import_ora(path: str | Path, max_pixels: int = MAX_CANVAS_PIXELS) -> tuple[int, int, list[Layer]]:
    """Read an OpenRaster file: canvas width, height and its layers bottom first (groups flattened).

    Layers keep their own size and offset (clipped to the canvas); a canvas of more than `max_pixels`
    is refused before any image is decoded.
    """
    label = Path(path).name
    with loading(label), open_archive(path, "OpenRaster image") as archive:
        text = read_member(archive, "stack.xml", MAX_STACK_BYTES)
        if b"<!DOCTYPE" in text or b"<!ENTITY" in text:  # entity expansion is how XML bombs work
            raise ProjectError(f"{label}: stack.xml declares entities; refusing it")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise ProjectError(f"{label}: stack.xml is not valid XML ({exc})") from None
        if root.tag != "image":
            raise ProjectError(f"{label}: stack.xml does not describe an image")
        width, height = _int(root, "w", label), _int(root, "h", label)
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ProjectError(f"{label}: a {width}×{height} image is outside 1…{MAX_SIDE} pixels")
        problem = canvas_problem(width, height, max_pixels)
        if problem:
            raise ProjectError(f"{label}: {problem}")
        budget = DecodeBudget(label)  # every layer's PNG is charged from its header before any is decoded
        for src in {el.get("src") for el in root.iter("layer")} - {None, ""}:
            budget.spend(*png_size(archive, str(src)), 4)
        decoded: dict[str, np.ndarray] = {}
        layers = [_layer(archive, element, width, height, label, decoded) for element in root.iter("layer")]
    if not layers:
        raise ProjectError(f"{label}: holds no layers")
    return width, height, list(reversed(layers))


def _int(element: ET.Element, key: str, label: str, default: str | None = None) -> int:
    value = element.get(key, default)
    try:
        return int(str(value))
    except ValueError:
        raise ProjectError(
            f"{label}: stack.xml's {key!r} should be a whole number (found {value!r:.40})"
        ) from None


def _layer(
    archive: zipfile.ZipFile,
    element: ET.Element,
    width: int,
    height: int,
    label: str,
    decoded: dict[str, np.ndarray],
) -> Layer:
    src = element.get("src")
    if not src:
        raise ProjectError(f"{label}: a layer in stack.xml names no image")
    if src not in decoded:  # layers naming one image share it, read-only, until one is painted
        try:
            decoded[src] = shared(read_png(archive, src, "RGBA"))
        except StudioError as exc:
            raise ProjectError(str(exc)) from None
    pixels = decoded[src]
    try:
        opacity = float(element.get("opacity", "1"))
    except ValueError:
        opacity = 1.0
    opacity = min(max(opacity if math.isfinite(opacity) else 1.0, 0.0), 1.0)
    x, y = _int(element, "x", label, "0"), _int(element, "y", label, "0")
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + pixels.shape[1], width), min(y + pixels.shape[0], height)
    if x1 <= x0 or y1 <= y0:  # wholly off the canvas: an empty layer that still keeps its place
        pixels, x0, y0 = np.zeros((1, 1, 4), np.uint8), 0, 0
    elif (x0, y0, x1, y1) != (x, y, x + pixels.shape[1], y + pixels.shape[0]):
        pixels = pixels[y0 - y : y1 - y, x0 - x : x1 - x]  # a view of the shared array: still read-only
    return Layer(
        name=element.get("name", "Layer"),
        pixels=pixels,
        opacity=opacity,
        visible=element.get("visibility", "visible") != "hidden",
        x=x0,
        y=y0,
    )
