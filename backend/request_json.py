"""A `Request` as JSON values: every field exact, images embedded as base64 PNG.

The one codec for requests: recipes (studio/recipe.py) wrap it with extras and lineage, and the remote
protocol (backend/wire.py) sends it to a Ray Serve server, which reads it back with the same checks.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from backend.errors import RequestError, StudioError
from backend.grids import grid_from_json, grid_to_json
from backend.images import Picture
from backend.request import Concept, Control, Lora, Request, non_finite
from backend.upscale_spec import upscale_from_json, upscale_to_json

RECIPE_FORMAT = "studio-recipe"
RECIPE_VERSION = 1
_IMAGE_FIELDS = {"init_image": False, "mask": True}  # field -> read back as a mask
_SKIP = {"request_id"}  # identifies one submission, not what was made


class RecipeError(StudioError):
    """A recipe (JSON or A1111 text) that cannot be read; the message says which value is wrong."""


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
        elif f.name == "grid":
            value = None if value is None else grid_to_json(value)
        elif f.name == "upscale":
            value = None if value is None else upscale_to_json(value)
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
    request = Request(**values)
    bad = non_finite(request)
    if bad:  # a NaN read into a request would be written into every file made from it
        raise RecipeError(f"recipe field {bad[0]!r} is not a finite number")
    return request, notes


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
    if name == "grid":
        if value is None:
            return None
        try:
            return grid_from_json(value)
        except RequestError as exc:
            raise RecipeError(f"recipe field 'grid': {exc}") from None
    if name == "upscale":
        if value is None:
            return None
        try:
            return upscale_from_json(value)
        except RequestError as exc:
            raise RecipeError(f"recipe field 'upscale': {exc}") from None
    if name == "colour_pins":
        if not isinstance(value, list):
            raise bad("a list of [colour, reference] pairs")
        try:
            return tuple((str(c), str(r)) for c, r in value)
        except (TypeError, ValueError):
            raise bad("a list of [colour, reference] pairs") from None
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
