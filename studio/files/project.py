"""The `.studio` project file: a zip with a versioned JSON manifest, every layer, the mask and the gallery.

Layout of the archive:
    mimetype                      "application/x-studio-project" (first, stored)
    manifest.json                 format, version, canvas, layers, gallery with recipes, history, lineage
    layers/<layer id>.png         RGBA, straight alpha, one per layer
    mask.png                      L, 255 = repaint
    gallery/<result id>.png       RGB result images
    gallery/<result id>.attr.npy  the patch engine's attribution map, when the result has one

`save_project` writes atomically (the old file survives any crash); `load_project` reads and validates
everything into a `ProjectData` before the caller touches its document, so a bad file changes nothing.
Older formats are upgraded by the chain in `MIGRATIONS`; a newer format is refused, never overwritten.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from backend import strict_json
from backend.errors import StudioError
from backend.request import Request
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
from studio.files.atomic import atomic_write, remove_stale_temps
from studio.gallery import Gallery, Result
from studio.layers import Layer, shared
from studio.recipe import recipe_from_dict, recipe_to_dict

__all__ = ["FORMAT_VERSION", "ProjectData", "ProjectError", "load_project", "save_project", "MIGRATIONS"]

FORMAT = "studio-project"
FORMAT_VERSION = 1
MIMETYPE = "application/x-studio-project"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # recipes embed init images as base64, so allow a roomy manifest
# Embedded images keep a real manifest from compressing much (base64 PNG: about 1.3:1; 3000 varied
# results without images: 9.5:1); one that inflates far beyond its stored size is filler (a history of a
# million repeated prompts). Within the free 4 MB the worst JSON (empty objects) parses to ~120 MB.
FREE_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_MANIFEST_RATIO = 50
MAX_HISTORY = 1000  # prompts kept from a file's history (the session keeps 50)
MAX_SIDE = 16384
MAX_LAYERS = 2000  # far beyond any painting; bounds the work a hostile manifest can ask for
MAX_RESULTS = 20000


@dataclass
class ProjectData:
    """Everything a project file holds, validated and decoded, ready to hand to a Document and Gallery."""

    width: int
    height: int
    layers: list[Layer]
    mask: np.ndarray
    active_id: str | None = None
    results: list[Result] = field(default_factory=list)
    prompt_history: list[str] = field(default_factory=list)
    save_id: str = ""  # changes on every save: lets the recovery journal tell which save it builds on
    notes: list[str] = field(default_factory=list)  # what a migration or a newer recipe could not keep
    source_version: int = FORMAT_VERSION  # the format the file was written in (older ones were migrated)

    def apply_to(self, document: Document, gallery: Gallery | None = None) -> None:
        """Replace a document's (and gallery's) contents with this project; the document becomes clean."""
        # Copies share pixels with this data until one side paints (copy-on-write), so this is cheap.
        document.reset(self.width, self.height, [layer.copy() for layer in self.layers], shared(self.mask))
        if self.active_id is not None and any(layer.id == self.active_id for layer in document.layers):
            document.active_id = self.active_id
        if gallery is not None:
            gallery.replace_all(list(self.results))


def project_data(
    document: Document, gallery: Gallery | None = None, prompt_history: Sequence[str] = ()
) -> ProjectData:
    """A snapshot of the live document, gallery and history: cheap (pixels shared copy-on-write), so it
    can be taken on the GUI thread and written by another."""
    document.mask = shared(document.mask)
    return ProjectData(
        width=document.width,
        height=document.height,
        layers=[layer.copy() for layer in document.layers],
        mask=document.mask,
        active_id=document.active_id,
        results=list(gallery.results) if gallery is not None else [],
        prompt_history=list(prompt_history),
    )


# ------------------------------------------------------------------------------------------------ save


def save_project(
    path: str | Path,
    document: Document | ProjectData,
    gallery: Gallery | None = None,
    prompt_history: Sequence[str] = (),
    save_id: str | None = None,
) -> str:
    """Write a project file atomically; returns the new save id (recorded in the manifest).

    The document is not marked clean here: the caller does that once the save has succeeded. A caller
    that must know the id before writing (the recovery journal notes a save as it starts) passes it.
    """
    data = document if isinstance(document, ProjectData) else project_data(document, gallery, prompt_history)
    save_id = save_id or uuid.uuid4().hex
    try:
        atomic_write(path, lambda handle: _write_archive(handle, data, save_id))
    except StudioError:
        raise
    except OSError as exc:
        raise ProjectError(f"{Path(path).name}: could not save ({exc.strerror or exc})") from None
    remove_stale_temps(path)
    return save_id


def _write_archive(handle: BinaryIO, data: ProjectData, save_id: str) -> None:
    with new_archive(handle) as archive:
        write_text(archive, "mimetype", MIMETYPE, compress=False)
        for layer in data.layers:
            write_png(archive, f"layers/{layer.id}.png", layer.pixels)
        write_png(archive, "mask.png", data.mask)
        for result in data.results:
            write_png(archive, f"gallery/{result.id}.png", result.image)
            if result.attribution is not None:
                buf = io.BytesIO()
                np.save(buf, np.ascontiguousarray(result.attribution), allow_pickle=False)
                archive.writestr(f"gallery/{result.id}.attr.npy", buf.getvalue())
        # The manifest goes last so a reader that finds it knows every image before it was written.
        write_text(archive, MANIFEST, strict_json.dumps(_manifest(data, save_id), indent=1))


def _manifest(data: ProjectData, save_id: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "save_id": save_id,
        "canvas": {"width": data.width, "height": data.height},
        "layers": [layer.properties() | {"image": f"layers/{layer.id}.png"} for layer in data.layers],
        "active_layer": data.active_id,
        "mask": "mask.png",
        "gallery": [result_to_json(result) for result in data.results],
        "prompt_history": list(data.prompt_history),
        "lineage": [[parent, r.id] for r in data.results for parent in r.parents],
    }


def result_to_json(result: Result) -> dict[str, Any]:
    """A gallery result's manifest entry (everything but its pixels); the journal uses it too."""
    return {
        "id": result.id,
        "recipe": recipe_to_dict(result.request, result.extras),
        "parents": list(result.parents),
        "painted": bool(result.painted),
        "created": float(result.created),
        "image": f"gallery/{result.id}.png",
        "attribution": f"gallery/{result.id}.attr.npy" if result.attribution is not None else None,
        **({"group": result.group} if result.group else {}),  # a grid's cell: the grid's id
        **({"cells": list(result.cells)} if result.cells else {}),  # a grid: its cells' ids
    }


# ------------------------------------------------------------------------------------------------ load


def load_project(path: str | Path, max_pixels: int = MAX_CANVAS_PIXELS) -> ProjectData:
    """Read and validate a whole project file; raises ProjectError with a clear message on any problem.

    A canvas of more than `max_pixels` is refused before any image is decoded.
    """
    label = Path(path).name
    with loading(label), open_archive(path, "studio project") as archive:
        manifest = _read_manifest(archive, label)
        source_version = manifest.get("version", 0) if isinstance(manifest, dict) else 0
        manifest, notes = migrate(manifest, label)
        try:
            data = _read(archive, manifest, label, max_pixels)
        except ProjectError:
            raise
        except StudioError as exc:  # a recipe or image the project holds is bad
            raise ProjectError(f"{label}: {exc}") from None
    data.notes = notes + data.notes
    data.source_version = source_version
    return data


def project_save_id(path: str | Path) -> str | None:
    """The save id in a project file (only its manifest is read); None if it has none or is unreadable."""
    label = Path(path).name
    try:
        with loading(label), open_archive(path, "studio project") as archive:
            manifest = _read_manifest(archive, label)
    except StudioError:
        return None
    save_id = manifest.get("save_id") if isinstance(manifest, dict) else None
    return save_id if isinstance(save_id, str) and save_id else None


def _read_manifest(archive: Any, label: str) -> Any:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise ProjectError(f"{label}: the entry {MANIFEST!r} is missing; the file is incomplete") from None
    if info.file_size > max(FREE_MANIFEST_BYTES, MAX_MANIFEST_RATIO * info.compress_size):
        raise ProjectError(
            f"{label}: the manifest inflates from {info.compress_size} to {info.file_size} bytes; "
            "a project's manifest never compresses that well, refusing it"
        )
    raw = read_member(archive, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        return strict_json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ProjectError(f"{label}: the manifest is nested too deeply to be a project") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProjectError(f"{label}: the manifest is not valid JSON ({exc})") from None


def keep_original(path: str | Path, version: int) -> Path | None:
    """Before a migrated project is first saved over, copy the original beside it (older studios read it).

    Returns the copy's path, or None when one already exists or the file is gone.
    """
    path = Path(path)
    backup = path.with_name(f"{path.stem}.format{version}{path.suffix}")
    if backup.exists() or not path.exists():
        return None
    try:
        atomic_write(backup, path.read_bytes())
    except OSError as exc:
        raise ProjectError(
            f"{path.name}: could not keep a copy of the original ({exc.strerror or exc})"
        ) from None
    return backup


def migrate(manifest: Any, label: str = "project") -> tuple[dict[str, Any], list[str]]:
    """Bring a manifest of any known version up to FORMAT_VERSION; refuse one from a newer studio."""
    if not isinstance(manifest, dict) or manifest.get("format", FORMAT) != FORMAT:
        raise ProjectError(f"{label}: not a studio project (the manifest has the wrong format)")
    version = manifest.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ProjectError(f"{label}: the manifest's version is not a whole number ({version!r:.40})")
    if version > FORMAT_VERSION:
        raise ProjectError(
            f"{label} was written by a newer studio (project format {version}; this studio reads up to "
            f"{FORMAT_VERSION}). Update the studio to open it; the file has not been changed."
        )
    notes: list[str] = []
    while version < FORMAT_VERSION:
        manifest, note = MIGRATIONS[version](manifest)
        version += 1
        manifest["version"] = version
        if note:
            notes.append(note)
    return manifest, notes


def _from_v0(manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Format 0 (the unversioned draft): `size` [w, h], layers without ids or lineage, `history`."""
    out = dict(manifest)
    size = out.pop("size", None)
    if isinstance(size, list) and len(size) == 2:
        out["canvas"] = {"width": size[0], "height": size[1]}
    layers = out.get("layers")
    if isinstance(layers, list):
        out["layers"] = [
            {"id": f"layer{i}", "source": None, "painted": False, **entry}
            if isinstance(entry, dict)
            else entry
            for i, entry in enumerate(layers)
        ]
    out.setdefault("prompt_history", out.pop("history", []))
    out.setdefault("gallery", [])
    out.setdefault("lineage", [])
    return out, "upgraded from project format 0; layers got new ids"


# Each entry upgrades a manifest from its version to the next one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], tuple[dict[str, Any], str]]] = {0: _from_v0}


_KIND_NAMES = {
    dict: "a JSON object",
    list: "a list",
    str: "text",
    int: "a whole number",
    bool: "true or false",
}


def _want(value: Any, kind: type | tuple[type, ...], what: str, label: str) -> Any:
    """`value` if it has the JSON type a manifest field needs; a ProjectError that says so otherwise."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    finite = not isinstance(value, float) or math.isfinite(value)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds) and finite:
        return value
    need = "a finite number" if float in kinds else _KIND_NAMES.get(kinds[0], kinds[0].__name__)
    got = "missing" if value is None else f"{type(value).__name__} {value!r:.40}"
    raise ProjectError(f"{label}: {what} should be {need} (found {got})")


def _read(archive: Any, m: dict[str, Any], label: str, max_pixels: int = MAX_CANVAS_PIXELS) -> ProjectData:
    canvas = _want(m.get("canvas"), dict, "the canvas", label)
    width = _want(canvas.get("width"), int, "the canvas width", label)
    height = _want(canvas.get("height"), int, "the canvas height", label)
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ProjectError(f"{label}: a {width}×{height} canvas is outside 1…{MAX_SIDE} pixels")
    problem = canvas_problem(width, height, max_pixels)
    if problem:
        raise ProjectError(f"{label}: {problem}")
    size = (width, height)
    budget = DecodeBudget(label)
    layer_list = _want(m.get("layers"), list, "the layer list", label)
    gallery = _want(m.get("gallery", []), list, "the gallery", label)
    if len(layer_list) > MAX_LAYERS or len(gallery) > MAX_RESULTS:
        raise ProjectError(
            f"{label}: lists {len(layer_list)} layers and {len(gallery)} results; too many to open"
        )
    # Every image is charged from its PNG header before any is decoded: a refusal costs nothing.
    images = {e["image"]: 4 for e in layer_list if isinstance(e, dict) and isinstance(e.get("image"), str)}
    images.update((e["image"], 3) for e in gallery if isinstance(e, dict) and isinstance(e.get("image"), str))
    for image_name, channels in images.items():
        budget.spend(*png_size(archive, image_name), channels)
    layers: list[Layer] = []
    seen: set[str] = set()
    # Layers that name the same image share one decoded, read-only array (copy-on-write): a small file
    # that names one blank image many times costs one image, not many.
    decoded: dict[str, np.ndarray] = {}
    for i, entry in enumerate(layer_list):
        what = f"layer {i + 1}"
        _want(entry, dict, what, label)
        layer_id = _want(entry.get("id"), str, f"{what}'s id", label)
        if not layer_id or layer_id in seen:
            raise ProjectError(f"{label}: {what} has an empty or repeated id")
        seen.add(layer_id)
        opacity = float(_want(entry.get("opacity", 1.0), (int, float), f"{what}'s opacity", label))
        source = entry.get("source")
        if source is not None:
            _want(source, str, f"{what}'s source", label)
        image = _want(entry.get("image"), str, f"{what}'s image", label)
        if image not in decoded:
            decoded[image] = shared(read_png(archive, image, "RGBA", None, within=size))
        pixels = decoded[image]
        x = _want(entry.get("x", 0), int, f"{what}'s x", label)
        y = _want(entry.get("y", 0), int, f"{what}'s y", label)
        h, w = pixels.shape[:2]
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise ProjectError(f"{label}: {what} ({w}×{h} at {x}, {y}) lies outside the canvas")
        layers.append(
            Layer(
                name=_want(entry.get("name", ""), str, f"{what}'s name", label),
                pixels=pixels,
                opacity=min(max(opacity, 0.0), 1.0),
                visible=_want(entry.get("visible", True), bool, f"{what}'s visibility", label),
                id=layer_id,
                source=source,
                painted=_want(entry.get("painted", False), bool, f"{what}'s painted flag", label),
                x=x,
                y=y,
            )
        )
    mask_name = _want(m.get("mask", "mask.png"), str, "the mask", label)
    mask = read_png(archive, mask_name, "L", size, budget)
    active = m.get("active_layer")
    if not isinstance(active, str) or active not in seen:
        active = None  # a dangling (or mistyped) active layer is harmless: fall back to the top one
    results = [_read_result(archive, e, i, label) for i, e in enumerate(gallery)]
    history = _want(m.get("prompt_history", []), list, "the prompt history", label)
    if not all(isinstance(p, str) for p in history):
        raise ProjectError(f"{label}: the prompt history should be a list of texts")
    notes = []
    if len(history) > MAX_HISTORY:  # newest first: keep the newest
        notes.append(f"kept the {MAX_HISTORY} newest of the {len(history)} prompts in its history")
        history = history[:MAX_HISTORY]
    save_id = m.get("save_id", "")
    return ProjectData(
        width,
        height,
        layers,
        mask,
        active,
        results,
        list(history),
        save_id if isinstance(save_id, str) else "",
        notes,
    )


def _read_result(archive: Any, entry: Any, i: int, label: str) -> Result:
    what = f"gallery entry {i + 1}"
    _want(entry, dict, what, label)
    image = read_png(archive, _want(entry.get("image"), str, f"{what}'s image", label), "RGB")
    attribution = None
    attr_name = entry.get("attribution")
    if attr_name is not None:
        attr_name = _want(attr_name, str, f"{what}'s attribution", label)
        attribution = _read_array(archive, attr_name, label, image.shape[:2])
    return result_from_entry(entry, image, attribution, what, label)


def result_from_entry(
    entry: Any, image: np.ndarray, attribution: np.ndarray | None, what: str, label: str
) -> Result:
    """A gallery result from its manifest entry (`result_to_json`), every field checked, and its pixels
    (read by the caller: from a project's members, or a journal record's arrays). Raises ProjectError."""
    _want(entry, dict, what, label)
    result_id = _want(entry.get("id"), str, f"{what}'s id", label)
    try:
        recipe = recipe_from_dict(entry.get("recipe"))
    except StudioError as exc:
        raise ProjectError(f"{label}: {what}'s recipe: {exc}") from None
    parents = _want(entry.get("parents", []), list, f"{what}'s parents", label)
    if not all(isinstance(p, str) for p in parents):
        raise ProjectError(f"{label}: {what}'s parents should be a list of ids")
    return Result(
        image=image,
        request=recipe.request if isinstance(recipe.request, Request) else Request(),
        extras=recipe.extras,
        parents=tuple(parents),
        painted=_want(entry.get("painted", False), bool, f"{what}'s painted flag", label),
        id=result_id,
        created=float(_want(entry.get("created", 0.0), (int, float), f"{what}'s time", label)),
        attribution=attribution,
        group=_want(entry.get("group"), (str, type(None)), f"{what}'s grid", label),
        cells=tuple(_ids(entry.get("cells", []), f"{what}'s cells", label)),
    )


def _ids(value: Any, what: str, label: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProjectError(f"{label}: {what} should be a list of ids")
    return value


def _read_array(archive: Any, name: str, label: str, image_size: tuple[int, ...]) -> np.ndarray:
    """An attribution map (H×W or H×W×C numbers, one row per image row) from an .npy member.

    The header is read and checked first: an .npy header may declare any shape, and numpy allocates what
    it declares before reading a byte of data (8 TiB from a 1 kB entry).
    """

    def refuse(why: str) -> ProjectError:
        return ProjectError(f"{label}: entry {name!r} {why}")

    data = read_member(archive, name)
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise refuse(f"is not a readable array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8 or not 2 <= len(shape) <= 3:
        raise refuse("is not a numeric image-shaped array")
    if tuple(shape[:2]) != tuple(image_size) or (len(shape) == 3 and not 1 <= shape[2] <= 4):
        raise refuse(f"has shape {shape}; its image is {image_size[1]}×{image_size[0]}")
    body = memoryview(data)[stream.tell() :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise refuse("holds a different amount of data than its header says")
    array = np.frombuffer(body, dtype).reshape(shape, order="F" if fortran else "C").copy()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise refuse("holds numbers that are not finite")
    return array
