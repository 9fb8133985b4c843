"""Recipes: a `Request` as versioned JSON (exact, images embedded) with extras and lineage.

The JSON recipe is the studio's own record: reading it back gives an equal `Request`, and it also carries
the engine's extras (model hash, reference shares) and the image's lineage (`Provenance`).
The A1111 `parameters` text that other tools read is in `studio.a1111`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.errors import StudioError
from backend.images import Picture
from backend.request import Concept, Control, Lora, Request

RECIPE_FORMAT = "studio-recipe"
RECIPE_VERSION = 1
MAX_CHAIN = 64  # ancestors kept in an image's chain: enough for any real session, bounded for hostile files
_IMAGE_FIELDS = {"init_image": False, "mask": True}  # field -> read back as a mask
_SKIP = {"request_id"}  # identifies one submission, not what was made


class RecipeError(StudioError):
    """A recipe (JSON or A1111 text) that cannot be read; the message says which value is wrong."""


@dataclass(frozen=True)
class Ancestor:
    """One earlier image in a chain: its id, its parents, whether it was painted on, its compact recipe."""

    id: str
    parents: tuple[str, ...] = ()
    painted: bool = False
    recipe: dict[str, Any] | None = field(default=None, hash=False)  # compact_recipe(); None: not generated


@dataclass(frozen=True)
class Provenance:
    """Where an image came from.

    `parents` are the ids of what it was made from (the init image, the result it varied, the layer it
    inpainted); `painted` says a person painted on it or composited it (on the image or on a parent in
    between); `chain` holds the ancestors, nearest first, so the history survives export and re-import.
    """

    id: str
    parents: tuple[str, ...] = ()
    painted: bool = False
    chain: tuple[Ancestor, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """What a recipe holds: the request, the engine's extras, and the lineage when known."""

    request: Request
    extras: dict[str, Any] = field(default_factory=dict, hash=False)
    provenance: Provenance | None = None
    notes: tuple[str, ...] = ()  # what could not be read exactly (fields from a newer studio, ...)


def request_to_dict(request: Request, images: bool = True) -> dict[str, Any]:
    """Every field of the request as JSON values; images as base64 PNG; digest only unless `images`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Request):
        if f.name in _SKIP:
            continue
        value = getattr(request, f.name)
        if isinstance(value, Picture):
            value = _picture_to_json(value, images)
        elif f.name == "concepts":
            value = [dataclasses.asdict(c) for c in value]
        elif f.name == "controls":
            value = [{**_shallow_dict(c), "image": _picture_to_json(c.image, images)} for c in value]
        elif f.name == "loras":
            value = [dataclasses.asdict(lora) for lora in value]
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out


def _picture_to_json(picture: Picture, images: bool) -> dict[str, str]:
    value = {"digest": picture.digest}
    if images:
        value["png"] = base64.b64encode(picture.to_png_bytes()).decode("ascii")
    return value


def _shallow_dict(item: Any) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}


def request_from_dict(data: Mapping[str, Any], missing_images: bool = False) -> tuple[Request, list[str]]:
    """The request a `request_to_dict` dict describes, and notes on keys it did not know.

    Missing keys take the Request defaults (recipes from older studios). An image given only by digest
    raises RecipeError unless `missing_images`, when it becomes None.
    """
    if not isinstance(data, Mapping):
        raise RecipeError("the recipe's request is not a JSON object")
    defaults = Request()
    known = {f.name for f in dataclasses.fields(Request)} - _SKIP
    values: dict[str, Any] = {}
    for name in known & set(data):
        values[name] = _field_from_json(name, data[name], getattr(defaults, name), missing_images)
    notes = [f"ignored unknown recipe field {k!r}" for k in sorted(set(data) - known - _SKIP)]
    return Request(**values), notes


def _field_from_json(name: str, value: Any, default: Any, missing_images: bool) -> Any:
    def bad(expected: str) -> RecipeError:
        return RecipeError(f"recipe field {name!r} should be {expected}, not {value!r:.60}")

    if name in _IMAGE_FIELDS:
        if value is None:
            return None
        return _picture_from_json(name.replace("_", " "), value, _IMAGE_FIELDS[name], missing_images, bad)
    if name == "controls":
        if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
            raise bad("a list of control objects")
        controls = []
        for c in value:
            image = _picture_from_json("control image", c.get("image"), False, missing_images, bad)
            if image is None:  # a stored request without images: the control cannot be rebuilt
                continue
            try:
                controls.append(
                    Control(
                        str(c["model"]),
                        str(c["kind"]),
                        image,
                        float(c.get("strength", 1.0)),
                        float(c.get("start", 0.0)),
                        float(c.get("end", 1.0)),
                    )
                )
            except (KeyError, TypeError, ValueError):
                raise bad("a list of controls with model, kind, image, strength, start and end") from None
        return tuple(controls)
    if name == "loras":
        if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
            raise bad("a list of LoRA objects")
        try:
            return tuple(Lora(str(x["name"]), float(x.get("strength", 1.0))) for x in value)
        except (KeyError, TypeError, ValueError):
            raise bad("a list of LoRAs with name and strength") from None
    if name == "concepts":
        if not isinstance(value, list) or not all(isinstance(c, Mapping) for c in value):
            raise bad("a list of concept objects")
        try:
            return tuple(
                Concept(
                    str(c["positive"]), str(c["negative"]), float(c["weight"]), float(c.get("start", 0.0))
                )
                for c in value
            )
        except (KeyError, TypeError, ValueError):
            raise bad("a list of concepts with positive, negative, weight and start") from None
    if name == "reference_weights":
        if not isinstance(value, list):
            raise bad("a list of [name, weight] pairs")
        try:
            return tuple((str(n), float(w)) for n, w in value)
        except (TypeError, ValueError):
            raise bad("a list of [name, weight] pairs") from None
    if name == "variation_seed":
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise bad("a whole number or null")
    # The rest are scalars: the default's type says which.
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("a whole number")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad("text")
    return value  # a field this module does not know the shape of: trust JSON


def _picture_from_json(
    what: str, value: Any, mask: bool, missing_images: bool, bad: Callable[[str], RecipeError]
) -> Picture | None:
    if not isinstance(value, Mapping):
        raise bad("an embedded PNG image")
    if "png" not in value:
        if missing_images:
            return None
        raise RecipeError(f"the recipe names its {what} but does not embed it")
    try:
        data = base64.b64decode(str(value["png"]), validate=True)
    except (binascii.Error, ValueError):
        raise bad("base64 PNG data") from None
    return Picture.from_png_bytes(data, mask=mask)


def compact_recipe(request: Request, extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A small recipe for an ancestor in a chain: images by digest only, plus the extras."""
    return {"request": request_to_dict(request, images=False), "extras": dict(extras or {})}


def ancestors_of(results: Iterable[Any]) -> tuple[Ancestor, ...]:
    """Chain links, nearest first, for results with `id`, `parents`, `painted`, `request` and `extras`.

    For the window: `Provenance(r.id, r.parents, r.painted, ancestors_of(gallery.chain(r.id)[1:]))`.
    """
    return tuple(
        Ancestor(str(r.id), tuple(r.parents), bool(r.painted), compact_recipe(r.request, r.extras))
        for r in list(results)[:MAX_CHAIN]
    )


def provenance_to_dict(provenance: Provenance) -> dict[str, Any]:
    """The lineage as JSON values."""
    return {
        "id": provenance.id,
        "parents": list(provenance.parents),
        "painted": provenance.painted,
        "chain": [
            {"id": a.id, "parents": list(a.parents), "painted": a.painted, "recipe": a.recipe}
            for a in provenance.chain[:MAX_CHAIN]
        ],
    }


def provenance_from_dict(data: Any) -> Provenance:
    """The lineage a `provenance_to_dict` dict describes."""

    def ids(value: Any, what: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"the lineage's {what} should be a list of ids")
        return tuple(value)

    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        raise RecipeError("the lineage record has no image id")
    chain = data.get("chain", [])
    if not isinstance(chain, list) or not all(
        isinstance(a, Mapping) and isinstance(a.get("id"), str) for a in chain
    ):
        raise RecipeError("the lineage chain should be a list of ancestors with ids")
    return Provenance(
        id=data["id"],
        parents=ids(data.get("parents", []), "parents"),
        painted=bool(data.get("painted", False)),
        chain=tuple(
            Ancestor(
                id=a["id"],
                parents=ids(a.get("parents", []), "ancestor parents"),
                painted=bool(a.get("painted", False)),
                recipe=a.get("recipe") if isinstance(a.get("recipe"), dict) else None,
            )
            for a in chain[:MAX_CHAIN]
        ),
    )


def recipe_to_dict(
    request: Request, extras: Mapping[str, Any] | None = None, provenance: Provenance | None = None
) -> dict[str, Any]:
    """The full versioned recipe: request (images embedded), extras and lineage."""
    out: dict[str, Any] = {
        "format": RECIPE_FORMAT,
        "version": RECIPE_VERSION,
        "request": request_to_dict(request),
        "extras": dict(extras or {}),
    }
    if provenance is not None:
        out["lineage"] = provenance_to_dict(provenance)
    return out


def recipe_from_dict(data: Any) -> Recipe:
    """Read a `recipe_to_dict` dict; raises RecipeError naming what is wrong."""
    if not isinstance(data, Mapping) or data.get("format") != RECIPE_FORMAT:
        raise RecipeError("not a studio recipe")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise RecipeError(f"the recipe has no valid version (got {version!r:.40})")
    request, notes = request_from_dict(data.get("request", {}))
    if version > RECIPE_VERSION:
        notes.insert(0, f"recipe version {version} is newer than this studio's ({RECIPE_VERSION})")
    extras = data.get("extras", {})
    if not isinstance(extras, dict):
        raise RecipeError("the recipe's extras should be a JSON object")
    lineage = data.get("lineage")
    provenance = provenance_from_dict(lineage) if lineage is not None else None
    return Recipe(request, extras, provenance, tuple(notes))


def recipe_to_json(
    request: Request, extras: Mapping[str, Any] | None = None, provenance: Provenance | None = None
) -> str:
    """The full recipe as compact JSON text (non-ASCII kept, so prompts stay readable)."""
    return json.dumps(recipe_to_dict(request, extras, provenance), ensure_ascii=False, separators=(",", ":"))


def recipe_from_json(text: str | bytes) -> Recipe:
    """Read recipe JSON text; raises RecipeError if it is not valid JSON or not a recipe."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecipeError(f"the recipe is not valid JSON ({exc})") from None
    return recipe_from_dict(data)
