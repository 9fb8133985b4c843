"""Files in and out of the canvas: fit an opened picture to it, export PNG with recipe and OpenRaster.

An export takes its snapshot on the GUI thread (`png_export`, `ora_export`: layers shared copy-on-write,
so the person may paint on at once) and writes it wherever the returned call runs: the window runs it on
a worker thread, the CLI and tests call `export_png` / `export_ora`, which write at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
from PIL import Image

from backend.errors import StudioError
from studio.compositing import composite
from studio.document import Document
from studio.layers import blank_pixels, rgb_to_rgba


def fit_to_canvas(rgb: np.ndarray, document: Document) -> np.ndarray:
    """An RGBA layer of the canvas size with `rgb` scaled to fit (keeping its shape) and centred."""
    h, w = rgb.shape[:2]
    scale = min(document.width / w, document.height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    out = blank_pixels(document.width, document.height)
    x, y = (document.width - size[0]) // 2, (document.height - size[1]) // 2
    out[y : y + size[1], x : x + size[0]] = rgb_to_rgba(rgb)
    return out


def newest_visible_result(session):  # noqa: ANN001, ANN201 - a Session, a Result or None
    """The result held by the top-most visible generated layer, if any."""
    for layer in reversed(session.document.layers):
        if layer.visible and layer.source:
            result = session.gallery.get(layer.source)
            if result is not None:
                return result
    return None


def png_export(path: str, session) -> Callable[[], str]:  # noqa: ANN001 - a Session
    """Take now, on the GUI thread, what a PNG export of the visible image writes (layers shared
    copy-on-write: microseconds); the returned call composites and writes it on any thread, atomically,
    with the recipe of the newest result on the canvas when there is one, and returns `path`."""
    from studio.files.atomic import atomic_write
    from studio.files.pngmeta import save_png
    from studio.recipe import Provenance, ancestors_of

    doc = session.document
    layers, width, height = [layer.copy() for layer in doc.layers], doc.width, doc.height
    result = newest_visible_result(session)
    # The result and its ancestors: the lineage travels in the file.
    chain = session.gallery.chain(result.id) if result is not None else []

    def write() -> str:
        image = composite(layers, width, height)
        if result is None:  # a painting with no generation in it: no recipe to claim
            try:
                atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))
            except OSError as exc:
                raise StudioError(f"could not write {path}: {exc.strerror or exc}") from None
            return path
        same = image.shape == result.image.shape and np.array_equal(image, result.image)
        if same:
            provenance = Provenance(result.id, result.parents, result.painted, ancestors_of(chain[1:]))
        else:  # the canvas differs from the result: a composite made from it
            provenance = Provenance(f"{result.id}-edit", (result.id,), True, ancestors_of(chain))
        save_png(path, image, result.request, result.extras, provenance)
        return path

    return write


def ora_export(path: str, session) -> Callable[[], str]:  # noqa: ANN001 - a Session
    """Take now what an OpenRaster export writes (every layer with its name, opacity, visibility and
    place; shared copy-on-write); the returned call writes it on any thread, atomically."""
    if importlib.util.find_spec("studio.files.ora") is None:
        raise StudioError("OpenRaster export is not available yet in this version of Studio")
    from studio.files.ora import export_ora as write_ora

    doc = session.document
    snapshot = Document(doc.width, doc.height, [layer.copy() for layer in doc.layers])

    def write() -> str:
        write_ora(path, snapshot)
        return path

    return write


def export_png(path: str, session) -> None:  # noqa: ANN001
    """Write the visible image as a PNG with its recipe, now (see `png_export`)."""
    png_export(path, session)()


def export_ora(path: str, session) -> None:  # noqa: ANN001
    """Write every layer as OpenRaster, now (see `ora_export`)."""
    ora_export(path, session)()
