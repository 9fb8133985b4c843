"""The remote engine's HTTP protocol, shared by the server (backend/serve.py) and the client (remote.py).

A run is `POST /v1/runs?client=C&id=I` with a recipe as its body (the same JSON a recipe holds, images
embedded) and a bearer token. The answer streams newline-delimited JSON, one object a line:

    {"type": "accepted", "id": ...}                       the server took the run
    {"type": "started", "device": ..., "replica": ...}   an engine replica began it
    {"type": "step", "step": k, "total": n, "elapsed_s": ..., "t": ..., "preview": JPEG base64 | null}
    {"type": "done", "image": PNG base64, "extras": {...}, "attribution": {...} | null, "elapsed_s": ...}
    {"type": "error", "message": ...}                    the run failed; the message is for a person
    {"type": "cancelled", "reason": ...}                 the run was cancelled or superseded

Previews are JPEG at display size (they are looked at, not kept); the final image is a lossless PNG, so a
remote run gives the same pixels as a local one. `t` is the server's wall clock when the engine yielded the
step (loopback benchmarks compare it with the client's clock).
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from backend import strict_json
from backend.errors import StudioError
from backend.events import Done, Event, StepEvent
from backend.images import MAX_PIXELS, Picture, open_image
from backend.request import Request
from backend.request_json import RECIPE_FORMAT, RECIPE_VERSION, request_from_dict, request_to_dict

API = "/v1"
INFO_PATH = f"{API}/info"
RUNS_PATH = f"{API}/runs"
PREVIEW_SIDE = 768  # the longest side of a streamed preview; the canvas scales it to the layer
PREVIEW_QUALITY = 85
# Two embedded 2048² PNGs of noise are about 25 MB as base64; nothing honest needs more.
MAX_BODY_BYTES = 48 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024  # one event line: a 2048² PNG of noise plus its attribution map


class RemoteError(StudioError):
    """A failure talking to a studio server: refused, unreachable, dropped, or a run the server failed."""


def run_path(run_id: str, action: str = "") -> str:
    """The path of one run (`action` "cancel" for its cancel call)."""
    return f"{RUNS_PATH}/{run_id}" + (f"/{action}" if action else "")


# ----------------------------------------------------------------------------------------------- requests


def encode_request(request: Request) -> bytes:
    """A run's body: the request as a recipe (format, version, request with images embedded)."""
    recipe = {"format": RECIPE_FORMAT, "version": RECIPE_VERSION, "request": request_to_dict(request)}
    return strict_json.dumps(recipe, separators=(",", ":")).encode("utf-8")


def decode_request(body: bytes) -> Request:
    """The request a run's body holds (a recipe, or a bare request object), validated.

    Raises StudioError naming the problem: bad JSON, a bad field, an image that cannot be read safely,
    a value out of range.
    """
    if len(body) > MAX_BODY_BYTES:
        raise StudioError(f"the request is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        data = strict_json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise StudioError(f"the request is not valid JSON ({exc})") from None
    if isinstance(data, Mapping) and data.get("format") == RECIPE_FORMAT:
        data = data.get("request")
    request, notes = request_from_dict(data)
    if notes:  # a field this server does not know would change the image: say so rather than ignore it
        raise StudioError(
            f"this server cannot run the request: {notes[0]} (is the server older than the client?)"
        )
    return request.validate()


# ------------------------------------------------------------------------------------------------- events


def line(kind: str, **fields: Any) -> bytes:
    """One event line of the stream."""
    return (
        strict_json.dumps({"type": kind, **fields}, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        + b"\n"
    )


def encode_event(event: Event, preview_side: int = PREVIEW_SIDE) -> bytes:
    """A StepEvent (preview as display-size JPEG) or Done (image as PNG) as one line."""
    if isinstance(event, StepEvent):
        return line(
            "step",
            step=event.step,
            total=event.total,
            elapsed_s=event.elapsed_s,
            t=time.time(),
            preview=None if event.preview is None else _jpeg(event.preview, preview_side),
        )
    attribution = None
    if event.attribution is not None:
        a = np.ascontiguousarray(event.attribution, dtype="<f4")
        attribution = {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode("ascii")}
    return line(
        "done",
        image=base64.b64encode(Picture(event.image).to_png_bytes()).decode("ascii"),
        extras=event.extras,
        attribution=attribution,
        elapsed_s=event.elapsed_s,
    )


def decode_event(data: Mapping[str, Any], request: Request) -> Event:
    """The StepEvent or Done a "step" or "done" line describes, for the client's own `request`."""
    try:
        if data["type"] == "step":
            preview = data.get("preview")
            return StepEvent(
                request.request_id,
                int(data["step"]),
                int(data["total"]),
                None if preview is None else _pixels(preview),
                float(data["elapsed_s"]),
            )
        image = _pixels(data["image"])
        if image.shape[:2] != (request.height, request.width):
            raise RemoteError(
                f"the server sent a {image.shape[1]}×{image.shape[0]} image for a "
                f"{request.width}×{request.height} request"
            )
        extras = data.get("extras") or {}
        if not isinstance(extras, dict):
            raise RemoteError("the server sent recipe extras that are not a JSON object")
        return Done(
            request.request_id,
            image,
            request,
            extras,
            _attribution(data.get("attribution"), image.shape[:2]),
            float(data.get("elapsed_s", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteError(f"the server sent an event this studio cannot read ({exc!r:.200})") from None


def parse_line(raw: bytes) -> dict[str, Any]:
    """One stream line as a JSON object; RemoteError for anything else."""
    try:
        data = strict_json.loads(raw)
    except (ValueError, RecursionError):
        raise RemoteError("the server sent a line that is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise RemoteError("the server sent an event without a type")
    return data


def _jpeg(pixels: np.ndarray, side: int) -> str:
    image = Image.fromarray(pixels)
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=PREVIEW_QUALITY)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pixels(text: str) -> np.ndarray:
    data = base64.b64decode(text, validate=True)
    image = open_image(io.BytesIO(data))  # refuses bombs like any image file
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _attribution(value: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if value is None:
        return None
    want = (shape[0], shape[1], 2)
    if tuple(value["shape"]) != want or want[0] * want[1] > MAX_PIXELS:
        raise ValueError(f"attribution shape {value['shape']} for a {shape[1]}×{shape[0]} image")
    data = base64.b64decode(value["f32"], validate=True)
    return np.frombuffer(data, dtype="<f4").reshape(want).astype(np.float32)
