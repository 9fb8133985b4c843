"""What a ControlNet sees: a control layer turned into the map its kind of ControlNet was trained on.

`raw`, `depth` and `pose` pass the person's image unchanged (they supply the map). The others are computed
with OpenCV the way the A1111 ControlNet extension's model-free preprocessors compute them:
- `canny`: Canny edges (white on black), as the `canny` preprocessor;
- `scribble`: extended difference of Gaussians, thresholded (`scribble_xdog`): dark strokes on a light layer,
  or the outlines of a photo, become white scribbles on black;
- `lineart`: dark lines over a blurred copy (`lineart_standard`): drawn line art becomes soft white lines.
Computed maps are made at the request's size so that line widths match the image being generated.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from backend.errors import RequestError
from backend.images import Picture

PASSED_UNCHANGED = ("raw", "depth", "pose")
CANNY_THRESHOLDS = (100, 200)  # A1111's defaults for the canny preprocessor
XDOG_THRESHOLD = 32  # A1111's default for scribble_xdog


def control_map(kind: str, picture: Picture, width: int, height: int) -> Image.Image:
    """The image the ControlNet is given for a control of `kind` (RGB, at `width`×`height` when computed)."""
    if kind in PASSED_UNCHANGED:
        return picture.to_pil()  # resized later exactly as diffusers' ControlNet pipelines resize it
    import cv2

    image = picture.to_pil().convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    rgb = np.asarray(image)
    if kind == "canny":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(gray, *CANNY_THRESHOLDS)
    elif kind == "scribble":
        edges = scribble_xdog(rgb)
    elif kind == "lineart":
        edges = lineart_standard(rgb)
    else:
        raise RequestError(f"unknown control kind {kind!r}")
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2), "RGB")


def scribble_xdog(rgb: np.ndarray, threshold: int = XDOG_THRESHOLD) -> np.ndarray:
    """White scribbles on black (uint8 H×W) where a small blur is darker than a large one."""
    import cv2

    x = rgb.astype(np.float32)
    fine = cv2.GaussianBlur(x, (0, 0), 0.5)
    coarse = cv2.GaussianBlur(x, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros(dog.shape, np.uint8)
    out[2 * (255 - dog.astype(np.int32)) > threshold] = 255
    return out


def lineart_standard(rgb: np.ndarray) -> np.ndarray:
    """Soft white lines on black (uint8 H×W) where the image is darker than its blurred surroundings."""
    import cv2

    x = rgb.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 16.0)
    intensity *= 127
    return intensity.clip(0, 255).astype(np.uint8)
