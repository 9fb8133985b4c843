"""The one value every engine takes: a frozen, validated description of a generation."""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from dataclasses import dataclass, field

from backend.errors import RequestError
from backend.grids import Grid
from backend.grids import problems as grid_problems
from backend.images import Picture
from backend.upscale_spec import Upscale
from backend.upscale_spec import problems as upscale_problems

ENGINES = ("patch", "diffusers")
PREVIEW_METHODS = ("auto", "latent_rgb", "taesd", "none")
PATCH_MODES = ("els", "ls")
MAX_PROMPT_CHARS = 2000
MAX_PINS = 32
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
MAX_SEED = 2**63 - 1
GUIDANCE_MAX = 50.0  # classifier-free guidance: the request, the prompt panel and the slider share it
# The patch engine works in pixel space, where 512² is already a large attention problem on a CPU.
SIZE_LIMITS = {"patch": (32, 512), "diffusers": (64, 2048)}
# The size a front end starts with when the person names none: the patch engine's references are 128² and
# a 20-step 512² run takes minutes on a CPU; Stable Diffusion 1.x was trained at 512².
DEFAULT_SIZE = {"patch": 256, "diffusers": 512}
# How a control image becomes a ControlNet's input: raw, depth and pose pass unchanged (the person supplies
# the map), the others are computed from the image (backend/control_images.py).
CONTROL_KINDS = ("raw", "canny", "scribble", "lineart", "depth", "pose")
MAX_CONTROLS = 4
MAX_LORAS = 16


@dataclass(frozen=True)
class Concept:
    """A direction in text-embedding space from `negative` to `positive`, scaled by `weight`.

    It applies from `start` (a fraction of the steps, 0 = first step) on, so that the composition
    set by the early steps holds.
    """

    positive: str
    negative: str
    weight: float = 0.0
    start: float = 0.0


@dataclass(frozen=True)
class Control:
    """One ControlNet input: its weights, the image and what it shows, and how strongly and when it steers.

    `start` and `end` are fractions of the steps (as diffusers' `control_guidance_start/end`).
    """

    model: str  # a ControlNet diffusers folder, a .safetensors file or a discovered name
    kind: str
    image: Picture
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class Lora:
    """A LoRA (file path or discovered name) applied at `strength` (A1111's `<lora:NAME:STRENGTH>`)."""

    name: str
    strength: float = 1.0


@dataclass(frozen=True)
class Request:
    """Everything one generation needs; equal requests give equal images on the same machine."""

    engine: str = "patch"
    model: str = ""  # diffusers: folder, .safetensors file or hub id; patch: reference folder ("" = defaults)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "euler"
    init_image: Picture | None = None
    strength: float = 0.75
    mask: Picture | None = None  # white (255) = repaint, black = keep
    tiling: bool = False
    variation_seed: int | None = None
    variation_strength: float = 0.0
    prompt_b: str = ""
    blend: float = 0.0
    concepts: tuple[Concept, ...] = ()
    controls: tuple[Control, ...] = ()  # diffusers: ControlNets, applied together
    loras: tuple[Lora, ...] = ()  # diffusers: LoRAs, applied together
    preview: str = "auto"
    # Patch engine: locality scales the patch-size schedule (1.0 = whole-image patches, memorisation).
    locality: float = 0.5
    reference_weights: tuple[tuple[str, float], ...] = ()  # (reference name or tag, log-prior)
    patch_mode: str = "els"
    exact: bool = False  # the exact ELS softmax over every patch, not the fast path's approximation
    # A variation grid: the cells are this request with each axis value put in (backend/grids.py).
    grid: Grid | None = None
    # Make the init image larger (then refine it at `strength`); width and height are the final size.
    upscale: Upscale | None = None
    # Patch engine, image-to-image and inpainting: keep the init image's layout (ILVR). `structure` sets the
    # low-pass size, from 1/32 of the side (0: exact colours) to 1/2 (1: only the broad layout);
    # `structure_steps` the fraction of the steps, the first ones, it applies to (0: off).
    structure: float = 0.5
    structure_steps: float = 1.0
    # Patch engine with an init image: (sketch colour "#rrggbb", reference name or "sketch") pairs that paint
    # that colour's strokes in that reference (or keep them as sketched); other colours choose by palette.
    colour_pins: tuple[tuple[str, str], ...] = ()
    # Not part of the recipe: identifies one submission so stale events can be dropped.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False, repr=False)

    def replace(self, **changes: object) -> Request:
        """A copy with some fields changed and a fresh request id."""
        changes.setdefault("request_id", uuid.uuid4().hex)
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> Request:
        """Raise RequestError naming the first bad value; return self so calls can chain."""
        problems = list(_problems(self))
        if problems:
            raise RequestError(problems[0])
        return self


def non_finite(value: object, name: str = "") -> list[str]:
    """The names of the numbers in a request (or any of its parts) that are NaN or infinite.

    `NaN < 0` and `NaN > 50` are both false, so range checks alone let NaN through into files.
    """
    if isinstance(value, float):
        return [] if math.isfinite(value) else [name]
    if isinstance(value, tuple | list):
        return [bad for item in value for bad in non_finite(item, name)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type | Picture):
        found = []
        for f in dataclasses.fields(value):
            part = f.name.replace("_", " ")
            found += non_finite(getattr(value, f.name), f"{name} {part}".strip())
        return found
    return []


def _problems(r: Request):  # noqa: ANN202 - a generator of messages
    for name in non_finite(r):
        yield f"{name} must be a finite number"
    if r.engine not in ENGINES:
        yield f"unknown engine {r.engine!r}; choose one of {', '.join(ENGINES)}"
    low, high = SIZE_LIMITS.get(r.engine, (64, 2048))
    for name, value in (("width", r.width), ("height", r.height)):
        if r.upscale is not None:  # the final size of an upscale: its own rules, in upscale_problems
            continue
        if not isinstance(value, int) or value % 8 or not low <= value <= high:
            yield f"{name} must be a multiple of 8 between {low} and {high} (got {value})"
    if not isinstance(r.steps, int) or not 1 <= r.steps <= 150:
        yield f"steps must be between 1 and 150 (got {r.steps})"
    if not isinstance(r.seed, int) or not 0 <= r.seed <= MAX_SEED:
        yield f"seed must be a whole number from 0 to {MAX_SEED} (got {r.seed})"
    if r.guidance < 0 or r.guidance > GUIDANCE_MAX:
        yield f"guidance must be between 0 and {GUIDANCE_MAX:g} (got {r.guidance})"
    if not 0.0 <= r.strength <= 1.0:
        yield f"strength must be between 0 and 1 (got {r.strength})"
    if not 0.0 <= r.variation_strength <= 1.0:
        yield f"variation strength must be between 0 and 1 (got {r.variation_strength})"
    if r.variation_seed is not None and not 0 <= r.variation_seed <= MAX_SEED:
        yield f"variation seed must be a whole number from 0 to {MAX_SEED} (got {r.variation_seed})"
    if r.variation_strength > 0 and r.variation_seed is None:
        yield "a variation strength needs a variation seed"
    if not 0.0 <= r.blend <= 1.0:
        yield f"prompt blend must be between 0 and 1 (got {r.blend})"
    if r.blend > 0 and not r.prompt_b.strip():
        yield "a prompt blend needs a second prompt (prompt B)"
    for text_name, text in (
        ("prompt", r.prompt),
        ("negative prompt", r.negative_prompt),
        ("prompt B", r.prompt_b),
    ):
        if len(text) > MAX_PROMPT_CHARS:
            yield f"{text_name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}"
    for c in r.concepts:
        if not (c.positive.strip() and c.negative.strip()):
            yield "a concept slider needs two phrases"
        if not -10.0 <= c.weight <= 10.0:
            yield f"concept weight must be between -10 and 10 (got {c.weight})"
        if not 0.0 <= c.start <= 1.0:
            yield f"concept start must be between 0 and 1 (got {c.start})"
    yield from _control_problems(r)
    yield from _lora_problems(r)
    yield from grid_problems(r)
    yield from upscale_problems(r)
    if r.preview not in PREVIEW_METHODS:
        yield f"unknown preview method {r.preview!r}; choose one of {', '.join(PREVIEW_METHODS)}"
    if r.init_image is not None:
        if r.init_image.is_mask:
            yield "the init image must be a colour image, not a mask"
        elif r.upscale is None and (r.init_image.width, r.init_image.height) != (r.width, r.height):
            yield (
                f"the init image is {r.init_image.width}×{r.init_image.height} but the request is "
                f"{r.width}×{r.height}; resize one to match"
            )
    if r.mask is not None:
        if r.init_image is None:
            yield "a mask needs an init image to inpaint"
        elif (r.mask.width, r.mask.height) != (r.width, r.height):
            yield f"the mask is {r.mask.width}×{r.mask.height} but the request is {r.width}×{r.height}"
    if not 0.0 <= r.locality <= 1.0:
        yield f"locality must be between 0 and 1 (got {r.locality})"
    if not 0.0 <= r.structure <= 1.0:
        yield f"structure must be between 0 and 1 (got {r.structure})"
    if not 0.0 <= r.structure_steps <= 1.0:
        yield f"structure steps must be a fraction between 0 and 1 (got {r.structure_steps})"
    if len(r.colour_pins) > MAX_PINS:
        yield f"at most {MAX_PINS} colour pins (got {len(r.colour_pins)})"
    for colour, target in r.colour_pins:
        if not _COLOUR.fullmatch(str(colour)):
            yield f"a colour pin's colour must look like #f0c828 (got {colour!r:.40})"
        if not str(target).strip():
            yield f"the colour pin for {colour} names no reference"
    if r.patch_mode not in PATCH_MODES:
        yield f"unknown patch mode {r.patch_mode!r}; choose one of {', '.join(PATCH_MODES)}"
    for name, weight in r.reference_weights:
        if not -20.0 <= weight <= 20.0:
            yield f"reference weight for {name!r} must be between -20 and 20 (got {weight})"


def _control_problems(r: Request):  # noqa: ANN202 - a generator of messages
    if r.controls and r.engine != "diffusers":
        yield "control layers (ControlNet) need the diffusers engine"
    if len(r.controls) > MAX_CONTROLS:
        yield f"at most {MAX_CONTROLS} control layers at once (got {len(r.controls)})"
    for n, c in enumerate(r.controls, 1):
        if not c.model.strip():
            yield f"control {n} has no ControlNet model"
        if c.kind not in CONTROL_KINDS:
            yield f"control {n}: unknown kind {c.kind!r}; choose one of {', '.join(CONTROL_KINDS)}"
        if not isinstance(c.image, Picture):
            yield f"control {n} has no image"
        if not 0.0 <= c.strength <= 2.0:
            yield f"control {n}: strength must be between 0 and 2 (got {c.strength})"
        if not 0.0 <= c.start < c.end <= 1.0:
            yield f"control {n}: start and end must satisfy 0 ≤ start < end ≤ 1 (got {c.start}, {c.end})"


def _lora_problems(r: Request):  # noqa: ANN202 - a generator of messages
    if r.loras and r.engine != "diffusers":
        yield "LoRAs need the diffusers engine"
    if len(r.loras) > MAX_LORAS:
        yield f"at most {MAX_LORAS} LoRAs at once (got {len(r.loras)})"
    names = [lora.name for lora in r.loras]
    for lora in r.loras:
        if not lora.name.strip():
            yield "a LoRA needs a file or a name"
        if not -10.0 <= lora.strength <= 10.0:
            yield f"LoRA {lora.name!r}: strength must be between -10 and 10 (got {lora.strength})"
        if names.count(lora.name) > 1:
            yield f"LoRA {lora.name!r} is named twice; give it once with one strength"
