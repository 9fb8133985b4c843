"""PNG files that say how they were made: A1111 parameters, the studio recipe, XMP provenance, lineage.

`save_png` writes an image with all of it, atomically; `read_png_metadata` reads it back, and also reads
images from other tools (A1111 `parameters` only, or nothing at all).

What goes into the file:
- `parameters` (tEXt, or iTXt when not Latin-1): A1111 text, for A1111's PNG Info and model sites.
- `studio:recipe` (iTXt): the full JSON recipe (request with images, extras, lineage with the ancestors'
  compact recipes) and the digest of the pixels written, so later edits by other programs show.
- `XML:com.adobe.xmp` (iTXt): XMP with IPTC `DigitalSourceType`, the AI system and prompt, engine, model,
  model hash, references and their shares, the image id, its parents and whether it was painted on.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import MAX_TEXT_CHUNK, PngInfo

from backend import strict_json
from backend.errors import StudioError
from backend.images import Picture, open_image
from backend.request import Request, non_finite
from studio.a1111 import model_display_name, request_from_a1111, to_a1111
from studio.files.atomic import atomic_write
from studio.recipe import Provenance, RecipeError, recipe_from_dict, recipe_to_dict

__all__ = [
    "COMPOSITE",
    "GENERATED",
    "ExportError",
    "PngMetadata",
    "Provenance",
    "digital_source_type",
    "read_png_metadata",
    "save_png",
    "xmp_packet",
]

IPTC_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = IPTC_SOURCE + "trainedAlgorithmicMedia"
COMPOSITE = IPTC_SOURCE + "compositeWithTrainedAlgorithmicMedia"
PARAMETERS_KEY = "parameters"
RECIPE_KEY = "studio:recipe"
XMP_KEY = "XML:com.adobe.xmp"
STUDIO_NS = "https://ns.studio.invalid/xmp/1.0/"  # our own XMP namespace; never fetched
_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "studio": STUDIO_NS,
}
# XML 1.0 forbids most control characters; a prompt may hold them, the XMP must not.
_XML_BAD = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


class ExportError(StudioError):
    """An image file that could not be written; the message names the file and why."""


@dataclass(frozen=True)
class PngMetadata:
    """What an image file says about itself. `request` is None when it carries no recipe we can read."""

    request: Request | None = None
    extras: dict[str, Any] = field(default_factory=dict, hash=False)
    provenance: Provenance | None = None
    parameters: str | None = None  # the A1111 text as written
    source_type: str | None = None  # IPTC DigitalSourceType URI from the XMP
    recipe_from: str | None = None  # "studio" (our JSON recipe), "a1111" (parameters only) or None
    edited: bool | None = None  # pixels differ from those exported; None when the file does not say
    notes: tuple[str, ...] = ()  # what was present but unreadable or ignored
    digest: str = ""  # SHA-256 of the pixels as read (Picture.digest): names an image that has no id
    size: tuple[int, int] = (0, 0)  # width, height

    @property
    def has_recipe(self) -> bool:
        """True when the file holds a recipe that gives a request."""
        return self.request is not None


def digital_source_type(request: Request, provenance: Provenance | None) -> str:
    """IPTC source type: a composite when a person painted on it or it inpaints other material."""
    painted = provenance is not None and provenance.painted
    return COMPOSITE if painted or request.mask is not None else GENERATED


def save_png(
    path: str | os.PathLike[str],
    image: np.ndarray | Picture,
    request: Request,
    extras: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
) -> Provenance:
    """Write `image` (H×W×3 uint8) as a PNG carrying its recipe, provenance and lineage; atomic.

    Without `provenance` the image is taken as a fresh generation with no known parents and its id is
    the start of its pixel digest. Returns the provenance written. Raises ExportError if it cannot write.
    """
    picture = image if isinstance(image, Picture) else Picture(np.asarray(image))
    if picture.is_mask:
        picture = Picture(np.repeat(picture.pixels[:, :, None], 3, axis=2))
    bad = non_finite(request)
    if bad:  # never write `"guidance":NaN` (not JSON) or `CFG scale: nan` into a file
        raise ExportError(f"cannot write {Path(path).name}: the recipe's {bad[0]} is not a finite number")
    extras = dict(extras or {})
    provenance = provenance or Provenance(id=picture.digest[:16])
    recipe = recipe_to_dict(request, extras, provenance)
    recipe["image_digest"] = picture.digest
    recipe_text = strict_json.dumps(recipe, separators=(",", ":"))

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, to_a1111(request, extras))
    # Pillow will not inflate text chunks over MAX_TEXT_CHUNK: a big recipe (embedded images) goes plain.
    info.add_itxt(RECIPE_KEY, recipe_text, zip=len(recipe_text.encode()) < MAX_TEXT_CHUNK // 2)
    info.add_itxt(XMP_KEY, xmp_packet(request, extras, provenance), zip=False)  # XMP spec: uncompressed
    info.add_text("Software", "Studio")
    _atomic_write(Path(path), lambda f: picture.to_pil().save(f, format="PNG", pnginfo=info))
    return provenance


def _atomic_write(path: Path, write: Any) -> None:
    """Write through studio.files.atomic (a crash leaves the old or the new file); ExportError on failure."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None


def _reference_shares(extras: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(reference, share) pairs from the patch engine's extras, in whichever shape it gives them."""
    raw = extras.get("reference_shares", extras.get("references"))
    pairs: list[tuple[str, float]] = []
    if isinstance(raw, Mapping):
        items: Any = raw.items()
    elif isinstance(raw, list):
        items = [(r.get("name"), r.get("share")) if isinstance(r, Mapping) else r for r in raw]
    else:
        return pairs
    for item in items:
        with contextlib.suppress(TypeError, ValueError):
            name, share = item
            pairs.append((str(name), float(share)))
    return pairs


def _x(text: Any) -> str:
    return escape(str(text).translate(_XML_BAD))


def _attr(text: Any) -> str:
    return quoteattr(str(text).translate(_XML_BAD))


def xmp_packet(request: Request, extras: Mapping[str, Any], provenance: Provenance) -> str:
    """The XMP packet: IPTC DigitalSourceType and AI fields, plus the studio's engine, model and lineage."""
    model_hash = extras.get("model_hash") or extras.get("model_sha256") or ""
    named = extras.get("model_name") or extras.get("model")
    model_name = named if isinstance(named, str) and named else model_display_name(request.model)
    if request.engine == "patch":
        system = f"Studio patch engine (equivariant local score); references: {model_name or 'default'}"
    else:
        system = f"Stable Diffusion; model: {model_name}" if model_name else "Stable Diffusion"
    attrs = {
        "Iptc4xmpExt:DigitalSourceType": digital_source_type(request, provenance),
        "Iptc4xmpExt:AISystemUsed": system,
        "Iptc4xmpExt:AIPromptInformation": request.prompt,
        "xmp:CreatorTool": "Studio",
        "studio:Engine": request.engine,
        "studio:Model": request.model,
        "studio:ModelName": model_name,
        "studio:ModelHash": model_hash,
        "studio:ImageID": provenance.id,
        "studio:Painted": "True" if provenance.painted else "False",
    }
    ns = " ".join(f"xmlns:{k}={_attr(v)}" for k, v in _NS.items() if k not in ("x", "rdf"))
    head = " ".join(f"{k}={_attr(v)}" for k, v in attrs.items() if v != "")
    parents = "".join(f"<rdf:li>{_x(p)}</rdf:li>" for p in provenance.parents)
    refs = "".join(
        f'<rdf:li rdf:parseType="Resource"><studio:Name>{_x(n)}</studio:Name>'
        f"<studio:Share>{s!r}</studio:Share></rdf:li>"
        for n, s in _reference_shares(extras)
    )
    body = f"<studio:Parents><rdf:Seq>{parents}</rdf:Seq></studio:Parents>"
    if refs:
        body += f"<studio:References><rdf:Seq>{refs}</rdf:Seq></studio:References>"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'<x:xmpmeta xmlns:x="{_NS["x"]}"><rdf:RDF xmlns:rdf="{_NS["rdf"]}">'
        f'<rdf:Description rdf:about="" {ns} {head}>{body}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def _source_type_from_xmp(xmp: str) -> str | None:
    try:
        root = ET.fromstring(xmp.encode("utf-8"))
    except ET.ParseError:
        return None
    key = "{" + _NS["Iptc4xmpExt"] + "}DigitalSourceType"
    for element in root.iter():
        if key in element.attrib:
            return element.attrib[key].strip()
        if element.tag == key and element.text:
            return element.text.strip()
    return None


def _texts(image: Image.Image) -> dict[str, str]:
    texts = {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    for key, value in image.info.items():  # JPEG/WebP from A1111 put parameters in the info too
        if isinstance(key, str) and isinstance(value, str):
            texts.setdefault(key, value)
    if PARAMETERS_KEY not in texts:  # A1111's JPEG/WebP: EXIF UserComment
        with contextlib.suppress(Exception):
            comment = image.getexif().get_ifd(0x8769).get(0x9286)
            if isinstance(comment, bytes) and comment[:8] == b"UNICODE\0":
                texts[PARAMETERS_KEY] = comment[8:].decode("utf-16-be")
            elif isinstance(comment, str) and comment:
                texts[PARAMETERS_KEY] = comment
    return texts


def read_png_metadata(path: str | os.PathLike[str]) -> PngMetadata:
    """Read what an image file says about how it was made (any format Pillow opens, PNG in full).

    Our own recipe wins; A1111 `parameters` from other tools give a request without images; a file with
    neither reads as `has_recipe == False`. Unreadable metadata becomes a note, never an exception;
    a file that is not an image raises ImageError.
    """
    notes: list[str] = []
    image = open_image(Path(path), notes)  # notes what it had to skip (text chunks too large to read)
    texts = _texts(image)
    digest = Picture.from_pil(image).digest
    request = provenance = recipe_from = edited = None
    extras: dict[str, Any] = {}
    parameters = texts.get(PARAMETERS_KEY)
    if RECIPE_KEY in texts:
        try:
            data = strict_json.loads(texts[RECIPE_KEY])
            recipe = recipe_from_dict(data)
            request, extras, provenance = recipe.request, dict(recipe.extras), recipe.provenance
            recipe_from = "studio"
            notes.extend(recipe.notes)
            written = data.get("image_digest")
            if isinstance(written, str):
                edited = digest != written
        except (RecipeError, ValueError, RecursionError, StudioError) as exc:
            notes.append(f"the studio recipe is unreadable: {exc}")
    if request is None and parameters:
        try:
            request, extras = request_from_a1111(parameters)
            recipe_from = "a1111"
        except (RecipeError, ValueError) as exc:
            notes.append(f"the A1111 parameters are unreadable: {exc}")
    source_type = _source_type_from_xmp(texts[XMP_KEY]) if XMP_KEY in texts else None
    if XMP_KEY in texts and source_type is None:
        notes.append("the XMP packet has no readable DigitalSourceType")
    if "workflow" in texts or "prompt" in texts:
        notes.append("a ComfyUI workflow is present (not read)")
    return PngMetadata(
        request,
        extras,
        provenance,
        parameters,
        source_type,
        recipe_from,
        edited,
        tuple(notes),
        digest,
        image.size,
    )
