"""Runs whose result is more than a new layer: a variation grid, an upscale, an expansion of the canvas.

Each builds its request from the panels' values (and the canvas or a gallery result), submits it through
the run controller (so previews, progress and cancel work as for any run) and says how its result is put
in place when it is done:

- a grid becomes one gallery entry holding its cells, each a result with its own recipe and the grid's
  parents; nothing lands on the canvas (clicking a cell restores its recipe);
- an upscaled gallery result becomes a new gallery entry whose parent is that result;
- an upscaled canvas scales the document (every layer, Lanczos) and adds the refined image on top, one
  undo step;
- an expansion grows the canvas at once (undoable) and, when the fill is done, adds the painted new area
  as a layer in that same undo step.
"""

from __future__ import annotations

from backend.errors import StudioError
from backend.events import Done
from backend.grids import Grid
from backend.images import Picture
from backend.outpaint import Expansion, fitted, outpaint_crop
from backend.request import Request
from backend.upscale_spec import DEFAULT_OVERLAP, Upscale, upscale_request
from studio.canvas_ops import CommandGroup, ScaleCanvas, resize_canvas
from studio.commands import AddLayer
from studio.document import Document
from studio.gallery import Result
from studio.layers import Layer, new_id, rgb_to_rgba
from studio.run_controller import Lineage, RunController, layer_name


def run_grid(runs: RunController, grid: Grid, **changes: object) -> Request | None:
    """Run the panels' values (with `changes`, e.g. a variation seed) as a grid, on the canvas's mode like
    Generate; None after saying why not."""
    try:
        request, lineage = runs.build()
        request = request.replace(grid=grid, **changes).validate()
    except StudioError as exc:
        runs.error.emit(str(exc))
        return None
    gallery = runs.gallery

    def place(done: Done, lineage: Lineage) -> Result:
        grid_id = new_id()
        cells = [
            Result(c.image, c.request, dict(c.extras), lineage.parents, lineage.painted, group=grid_id)
            for c in done.cells
        ]
        entry = Result(
            done.image,
            done.request,
            dict(done.extras),
            lineage.parents,
            lineage.painted,
            id=grid_id,
            cells=tuple(c.id for c in cells),
        )
        gallery.add_grid(entry, cells)
        return entry

    runs.model.remember_prompt(request.prompt)
    runs.submit_job(request, lineage, place)
    return request


def upscale_settings(factor: int, model: str = "", tile: int = 0, overlap: int = DEFAULT_OVERLAP) -> Upscale:
    """The settings an upscale dialog gives (one place for their defaults)."""
    return Upscale(factor, model, tile, overlap)


def upscale_result(runs: RunController, result: Result, settings: Upscale, strength: float) -> Request | None:
    """Upscale a gallery result with its own recipe's prompt and model; the new entry's parent is it."""
    if result.cells:
        runs.error.emit("Upscale one of the grid's cells: open the grid and choose a cell.")
        return None
    request = upscale_request(result.request, Picture(result.image), settings, strength)
    gallery = runs.gallery

    def place(done: Done, lineage: Lineage) -> Result:
        entry = Result(done.image, done.request, dict(done.extras), lineage.parents, lineage.painted)
        gallery.add(entry)
        return entry

    return _submit(runs, request, Lineage((result.id,), result.painted), place)


def upscale_canvas(runs: RunController, settings: Upscale, strength: float) -> Request | None:
    """Upscale what the canvas shows with the panels' prompt and model; the document scales with it."""
    doc = runs.document
    source = Picture(doc.composite())
    request = upscale_request(runs.model.request, source, settings, strength)
    gallery = runs.gallery

    def place(done: Done, lineage: Lineage) -> Result:
        entry = Result(done.image, done.request, dict(done.extras), lineage.parents, lineage.painted)
        if (doc.width * settings.factor, doc.height * settings.factor) == done.image.shape[1::-1]:
            layer = Layer(f"Upscaled ×{settings.factor}", rgb_to_rgba(done.image), source=entry.id)
            doc.push(
                CommandGroup(
                    [ScaleCanvas(settings.factor), AddLayer(layer, len(doc.layers), label="Add result")],
                    f"Upscale canvas ×{settings.factor}",
                )
            )
        gallery.add(entry)
        return entry

    return _submit(runs, request, canvas_lineage(doc, source), place)


def expand_canvas(runs: RunController, expansion: Expansion, fill: bool = True) -> Request | None:
    """Grow the canvas now (one undo step); with `fill`, paint the new area from the picture around it and
    add it to that step as a layer. The panels' prompt and model paint it, at strength 1."""
    doc = runs.document
    try:
        e = fitted(expansion, doc.width, doc.height)
        picture = doc.composite()
        request, (x, y) = (
            outpaint_crop(runs.model.request.replace(strength=1.0), picture, e) if fill else (None, (0, 0))
        )
        if request is not None:
            request.validate()
    except StudioError as exc:
        runs.error.emit(str(exc))
        return None
    lineage = canvas_lineage(doc, Picture(picture))
    width, height = e.size(doc.width, doc.height)
    group = resize_canvas(doc, width, height, e.left, e.top, "Expand canvas" if fill else "Canvas size")
    if request is None:
        return None
    gallery = runs.gallery

    def place(done: Done, lineage: Lineage) -> Result:
        entry = Result(done.image, done.request, dict(done.extras), lineage.parents, lineage.painted)
        assert done.request.mask is not None
        pixels = rgb_to_rgba(done.image)
        pixels[..., 3] = done.request.mask.pixels  # only the painted area: the layers below stay as they were
        name = f"Expanded: {layer_name(done.request.prompt)}"
        layer = Layer(name, pixels, source=entry.id, x=x, y=y)  # a large canvas: the crop painted
        add = AddLayer(layer, len(doc.layers), label="Add result")
        fits = x + done.image.shape[1] <= doc.width and y + done.image.shape[0] <= doc.height
        if fits and not (isinstance(group, CommandGroup) and group.join(doc, add)):
            doc.push(add)  # the person did something after the expansion: the fill is a step of its own
        gallery.add(entry)
        return entry

    return _submit(runs, request, lineage, place)


def canvas_lineage(doc: Document, picture: Picture) -> Lineage:
    """The lineage of a run that starts from the whole canvas: the results its visible layers show."""
    sources = [la for la in doc.layers if la.visible and la.opacity > 0 and la.source]
    parents = tuple(dict.fromkeys(la.source for la in sources if la.source)) or (
        f"image:{picture.digest[:16]}",
    )
    return Lineage(parents, any(la.painted for la in sources))


def _submit(runs: RunController, request: Request, lineage: Lineage, place) -> Request | None:  # noqa: ANN001
    try:
        runs.submit_job(request, lineage, place)
    except StudioError as exc:
        runs.error.emit(str(exc))
        return None
    return request
