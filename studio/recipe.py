"""Recipes: a `Request` as versioned JSON (exact, images embedded) with extras and lineage.

The JSON recipe is the studio's own record: reading it back gives an equal `Request`, and it also carries
the engine's extras (model hash, reference shares) and the image's lineage (`Provenance`).
The A1111 `parameters` text that other tools read is in `studio.a1111`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend import strict_json
from backend.request import Request
from backend.request_json import (
    RECIPE_FORMAT,
    RECIPE_VERSION,
    RecipeError,
    request_from_dict,
    request_to_dict,
)

MAX_CHAIN = 64  # ancestors kept in an image's chain: enough for any real session, bounded for hostile files


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


def compact_recipe(request: Request, extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A small recipe for an ancestor in a chain: images by digest only, plus the extras."""
    return {"request": request_to_dict(request, images=False), "extras": jsonable(dict(extras or {}))}


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
        "extras": jsonable(dict(extras or {})),
    }
    if provenance is not None:
        out["lineage"] = provenance_to_dict(provenance)
    return out


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of engine extras: numpy values become plain numbers and lists, and a number that
    is not finite becomes null (extras describe a run; a NaN in them must not make the file invalid)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist()) if value.size <= 4096 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


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
    return strict_json.dumps(recipe_to_dict(request, extras, provenance), separators=(",", ":"))


def recipe_from_json(text: str | bytes) -> Recipe:
    """Read recipe JSON text; raises RecipeError if it is not valid JSON or not a recipe."""
    try:
        data = strict_json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecipeError(f"the recipe is not valid JSON ({exc})") from None
    return recipe_from_dict(data)
