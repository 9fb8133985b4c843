"""Files in and out of the canvas: fit an opened picture to it, export PNG with recipe and OpenRaster."""

from __future__ import annotations

import importlib.util

import numpy as np
from PIL import Image

from backend.errors import StudioError
from studio.document import Document, blank_pixels, rgb_to_rgba


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


def export_png(path: str, session) -> None:  # noqa: ANN001
    """Write the visible image; with the recipe of the newest result on the canvas when there is one."""
    from studio.atomic import atomic_write
    from studio.pngmeta import save_png
    from studio.recipe import Provenance, ancestors_of

    image = session.document.composite()
    result = newest_visible_result(session)
    if result is None:  # a painting with no generation in it: no recipe to claim
        try:
            atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))
        except OSError as exc:
            raise StudioError(f"could not write {path}: {exc.strerror or exc}") from None
        return
    same = image.shape == result.image.shape and np.array_equal(image, result.image)
    chain = session.gallery.chain(result.id)  # the result and its ancestors: the lineage travels in the file
    if same:
        provenance = Provenance(result.id, result.parents, result.painted, ancestors_of(chain[1:]))
    else:  # the canvas differs from the result: a composite made from it
        provenance = Provenance(f"{result.id}-edit", (result.id,), True, ancestors_of(chain))
    save_png(path, image, result.request, result.extras, provenance)


def export_ora(path: str, session) -> None:  # noqa: ANN001
    """Write every layer with its name, opacity and visibility as OpenRaster."""
    if importlib.util.find_spec("studio.ora") is None:
        raise StudioError("OpenRaster export is not available yet in this version of Studio")
    from studio.ora import export_ora as write_ora

    write_ora(path, session.document)
