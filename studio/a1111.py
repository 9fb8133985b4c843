"""A1111 `parameters` text: the format A1111's PNG Info, Civitai and other model sites read.

`to_a1111` writes a request as that text; `request_from_a1111` reads it back (ours or from the wild).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend import strict_json
from backend.errors import RequestError
from backend.grids import Axis, Grid, canonical_axis, parse_values, values_text
from backend.prompt_syntax import lora_tag, split_lora_tags
from backend.request import Concept, Lora, Request, non_finite
from backend.upscale_spec import DEFAULT_OVERLAP, Upscale
from studio.recipe import RecipeError

# Our scheduler names and A1111's sampler names; a "_karras"-style suffix is A1111's "Schedule type".
_SAMPLERS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "dpm2": "DPM2",
    "dpm2_a": "DPM2 a",
    "dpmpp_2s_a": "DPM++ 2S a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "ddpm": "DDPM",
    "pndm": "PLMS",
    "unipc": "UniPC",
    "lcm": "LCM",
}
_ALIASES = {"euler_ancestral": "euler_a", "plms": "pndm", "k_euler": "euler", "k_euler_a": "euler_a"}
_SCHEDULES = {"karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}
_SAMPLER_NAMES = {v.lower(): k for k, v in _SAMPLERS.items()}
_SCHEDULE_NAMES = {v.lower(): k for k, v in _SCHEDULES.items()}

# A1111's own infotext grammar (modules/infotext_utils.py), so that we read what it reads.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_NEGATIVE = "Negative prompt:"
_MODEL_EXT = re.compile(r"\.(safetensors|ckpt|pt|pth|bin)$", re.IGNORECASE)


def scheduler_to_a1111(name: str) -> tuple[str, str | None]:
    """A1111's (sampler, schedule type) for one of our scheduler names; unknown names pass through."""
    name = _ALIASES.get(name, name)
    if name in _SAMPLERS:
        return _SAMPLERS[name], None
    for suffix, schedule in _SCHEDULES.items():
        base = name.removesuffix("_" + suffix)
        if base != name and _ALIASES.get(base, base) in _SAMPLERS:
            return _SAMPLERS[_ALIASES.get(base, base)], schedule
    return name, None


def scheduler_from_a1111(sampler: str, schedule: str | None = None) -> str:
    """Our scheduler name for A1111's sampler and schedule type; unknown samplers pass through."""
    sampler = sampler.strip()
    schedule_key = _SCHEDULE_NAMES.get((schedule or "").strip().lower())
    base = _SAMPLER_NAMES.get(sampler.lower())
    if base is None:  # A1111 before 1.9 wrote the schedule into the name: "DPM++ 2M Karras"
        for suffix, label in _SCHEDULES.items():
            if sampler.lower().endswith(" " + label.lower()):
                base = _SAMPLER_NAMES.get(sampler[: -len(label) - 1].strip().lower())
                schedule_key = schedule_key or (suffix if base else None)
                break
    if base is None:
        return sampler
    return f"{base}_{schedule_key}" if schedule_key else base


def _quote(text: str) -> str:
    # A1111 quotes values holding ',', ':' or a newline as JSON; we also quote edge spaces and leading
    # quotes, which A1111's parser would otherwise strip or misread. Its unquote reads both.
    if any(c in text for c in ",:\n") or text != text.strip() or text.startswith('"'):
        return strict_json.dumps(text)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = strict_json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    return text


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


def model_display_name(model: str) -> str:
    """The short model name A1111 shows: a file or folder stem, or a hub id as is."""
    if not model:
        return ""
    tail = re.split(r"[\\/]", model.rstrip("\\/"))[-1]
    stem, n = _MODEL_EXT.subn("", tail)
    if n == 0 and model.count("/") == 1 and "\\" not in model and not model.startswith((".", "/", "~")):
        return model  # a hub id "org/name"
    return stem


def to_a1111(request: Request, extras: Mapping[str, Any] | None = None) -> str:
    """A1111 `parameters` text for the request: prompt, "Negative prompt: ...", then "Key: value" pairs.

    What this text cannot carry: the init image, the mask and control images (only their settings go), and
    prompts whose lines have leading or trailing spaces or start with "Negative prompt:" (A1111's parser
    strips and splits them). LoRAs go as `<lora:NAME:W>` tags after the prompt, as A1111 writes them.
    Everything else reads back equal through `request_from_a1111`; fields A1111 lacks go as extra pairs.
    `extras` adds the model hash (A1111 "AutoV2": the first 10 hex digits of the file's SHA-256) and the
    LoRA and ControlNet hashes.
    """
    extras = extras or {}
    d = Request()
    sampler, schedule = scheduler_to_a1111(request.scheduler)
    p: dict[str, str | None] = {
        "Steps": str(request.steps),
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _num(request.guidance),
        "Seed": str(request.seed),
        "Size": f"{request.width}x{request.height}",
    }
    model_hash = extras.get("model_hash") or extras.get("model_sha256")
    if isinstance(model_hash, str) and model_hash:
        p["Model hash"] = model_hash[:10]
    name = model_display_name(request.model)
    p["Model"] = name or None
    if request.model != name:
        p["Model path"] = request.model
    p.update(_lora_fields(request, extras))
    p.update(_control_fields(request, extras))
    if request.init_image is not None:  # text to image denoises from noise: a strength would mislead
        p["Denoising strength"] = _num(request.strength)
    if request.variation_seed is not None or request.variation_strength != d.variation_strength:
        p["Variation seed"] = None if request.variation_seed is None else str(request.variation_seed)
        p["Variation seed strength"] = _num(request.variation_strength)
    p["Engine"] = request.engine
    p["Tiling"] = "True" if request.tiling else None
    p["Prompt B"] = request.prompt_b or None
    p["Prompt blend"] = _num(request.blend) if request.blend != d.blend else None
    if request.concepts:
        p["Concepts"] = strict_json.dumps(
            [[c.positive, c.negative, c.weight, c.start] for c in request.concepts], ensure_ascii=True
        )
    p["Preview"] = request.preview if request.preview != d.preview else None
    if request.engine == "patch" or request.locality != d.locality:
        p["Locality"] = _num(request.locality)
    if request.reference_weights:
        p["Reference weights"] = strict_json.dumps(
            [[n, w] for n, w in request.reference_weights], ensure_ascii=True
        )
    p["Patch mode"] = request.patch_mode if request.patch_mode != d.patch_mode else None
    p["Exact"] = "True" if request.exact else None
    if request.upscale is not None:  # as A1111's postprocessing and SD upscale script write theirs
        u = request.upscale
        p["Upscale by"] = str(u.factor)
        p["Upscaler"] = model_display_name(u.model) if u.model else "Lanczos"
        p["Upscaler path"] = u.model if u.model and model_display_name(u.model) != u.model else None
        p["SD upscale tile"] = str(u.tile) if u.tile else None
        p["SD upscale overlap"] = str(u.overlap)
    if request.grid is not None:  # as A1111's X/Y/Z plot writes its grid image's parameters
        p["Script"] = "X/Y/Z plot"
        for letter, axis in zip("XY", request.grid.axes(), strict=False):
            p[f"{letter} Type"] = axis.label
            p[f"{letter} Values"] = values_text(axis)
    sketch = request.engine == "patch" and request.init_image is not None
    if sketch or request.structure != d.structure:
        p["Structure"] = _num(request.structure)
    if sketch or request.structure_steps != d.structure_steps:
        p["Structure steps"] = _num(request.structure_steps)
    if request.colour_pins:
        p["Colour pins"] = strict_json.dumps([[c, r] for c, r in request.colour_pins])
    p["Version"] = "Studio"
    pairs = ", ".join(f"{k}: {_quote(v)}" for k, v in p.items() if v is not None and v != "")
    negative = f"\n{_NEGATIVE} {request.negative_prompt}" if request.negative_prompt else ""
    tags = "".join(" " + lora_tag(model_display_name(lora.name), lora.strength) for lora in request.loras)
    return f"{request.prompt}{tags}{negative}\n{pairs}".strip()


def _lora_fields(request: Request, extras: Mapping[str, Any]) -> dict[str, str | None]:
    """A1111's "Lora hashes" (AutoV3, which Civitai looks up) and, when a LoRA was named by its path,
    the paths so that the text reads back to the same request."""
    out: dict[str, str | None] = {}
    hashes = [
        f"{model_display_name(str(x.get('name', '')))}: {str(x['autov3'])[:12]}"
        for x in extras.get("loras", [])
        if isinstance(x, Mapping) and x.get("autov3")
    ]
    out["Lora hashes"] = ", ".join(hashes) or None
    if any(model_display_name(lora.name) != lora.name for lora in request.loras):
        out["Lora paths"] = strict_json.dumps([lora.name for lora in request.loras])
    return out


# How A1111's ControlNet extension names the preprocessor for each of our kinds.
_CONTROL_MODULES = {"raw": "none", "depth": "none", "pose": "none", "scribble": "scribble_xdog"}
_CONTROL_MODULES["lineart"] = "lineart_standard"


def _control_fields(request: Request, extras: Mapping[str, Any]) -> dict[str, str | None]:
    """One "ControlNet N" field per control, in the ControlNet extension's own form (images do not go)."""
    hashes = [x.get("sha256", "") if isinstance(x, Mapping) else "" for x in extras.get("controls", [])]
    out: dict[str, str | None] = {}
    for n, c in enumerate(request.controls):
        digest = str(hashes[n])[:8] if n < len(hashes) and hashes[n] else ""
        model = model_display_name(c.model) + (f" [{digest}]" if digest else "")
        out[f"ControlNet {n}"] = (
            f"Module: {_CONTROL_MODULES.get(c.kind, c.kind)}, Model: {model}, Weight: {_num(c.strength)}, "
            f"Guidance Start: {_num(c.start)}, Guidance End: {_num(c.end)}"
        )
    return out


def _upscale(f: Mapping[str, str]) -> Upscale | None:
    """Our upscale settings, when the text has "Upscale by" (A1111's "Postprocess upscale by" too)."""
    factor = f.get("Upscale by", f.get("Postprocess upscale by", "")).strip()
    if not factor:
        return None
    try:
        tile, overlap = int(f.get("SD upscale tile", "0")), int(f.get("SD upscale overlap", DEFAULT_OVERLAP))
        scale = float(factor)
    except ValueError:
        raise RecipeError("A1111 parameters: the upscale fields should be numbers") from None
    name = f.get("Upscaler path") or f.get("Upscaler", f.get("Postprocess upscaler", ""))
    model = "" if name.strip().lower() in ("", "lanczos", "none") else name.strip()
    return Upscale(int(scale) if scale.is_integer() else 0, model, tile, overlap)


def _grid(f: Mapping[str, str]) -> Grid | None:
    """The X/Y plot's axes, when the text names them (A1111 also has a Z axis: not read)."""
    axes = []
    for letter in "XY":
        label, values = f.get(f"{letter} Type", "").strip(), f.get(f"{letter} Values", "")
        if not label or label.lower() == "nothing":
            continue
        try:
            name = canonical_axis(label)
            parsed = parse_values(name, values)
        except RequestError as exc:
            raise RecipeError(f"A1111 parameters: {exc}") from None
        if name == "scheduler":
            parsed = tuple(scheduler_from_a1111(str(v)) for v in parsed)
        axes.append(Axis(name, parsed))
    if not axes:
        return None
    return Grid(axes[0], axes[1] if len(axes) > 1 else None)


@dataclass(frozen=True)
class A1111Text:
    """A1111 parameters split the way A1111 splits them: prompt, negative prompt, ordered fields."""

    prompt: str
    negative_prompt: str
    fields: dict[str, str] = field(hash=False)


def parse_a1111(text: str) -> A1111Text:
    """Split A1111 text like A1111's PNG Info does (quoted values unquoted, sizes left as "WxH")."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # A1111's own test for "the last line is the parameters"
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE) :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {k.strip(): _unquote(v.strip() if not v.startswith('"') else v) for k, v in _PARAM.findall(last)}
    return A1111Text("\n".join(prompt), "\n".join(negative), fields)


def request_from_a1111(text: str) -> tuple[Request, dict[str, Any]]:
    """The request and extras (model hash and name) that A1111 parameters text describes.

    Images are never in A1111 text, so the request has no init image, mask or control images (the
    "ControlNet N" fields are not read back). `<lora:NAME:W>` tags leave the prompt and become the
    request's LoRAs. Text from A1111 itself (no "Engine" field) is taken as a diffusers request. Unknown
    fields (hires fix, ADetailer...) are ignored. A value that should be a number but is not raises
    RecipeError.
    """
    parsed = parse_a1111(text)
    f = parsed.fields
    d = Request()

    def number(key: str, kind: type, default: Any) -> Any:
        if key not in f or f[key].strip() == "":
            return default
        try:
            return kind(f[key].strip())
        except ValueError:
            raise RecipeError(f"A1111 parameters: {key} should be a number, not {f[key]!r:.40}") from None

    def flag(key: str) -> bool:
        return f.get(key, "").strip().lower() == "true"

    def listing(key: str) -> list[Any]:
        if key not in f:
            return []
        try:
            value = strict_json.loads(f[key])
        except (ValueError, RecursionError):
            raise RecipeError(f"A1111 parameters: {key} is not a readable list") from None
        if not isinstance(value, list):
            raise RecipeError(f"A1111 parameters: {key} is not a list")
        return value

    width, height = d.width, d.height
    if "Size" in f:
        size = _SIZE.match(f["Size"])
        if size is None:
            raise RecipeError(f"A1111 parameters: Size should look like 512x512, not {f['Size']!r:.40}")
        width, height = int(size.group(1)), int(size.group(2))
    try:
        concepts = tuple(Concept(str(a), str(b), float(w), float(s)) for a, b, w, s in listing("Concepts"))
        weights = tuple((str(n), float(w)) for n, w in listing("Reference weights"))
        pins = tuple((str(c), str(r)) for c, r in listing("Colour pins"))
    except (TypeError, ValueError):
        raise RecipeError(
            "A1111 parameters: Concepts, Reference weights or Colour pins have the wrong shape"
        ) from None
    engine = f.get("Engine", "diffusers").strip()
    model = f["Model path"] if "Model path" in f else f.get("Model", "").strip()
    prompt, tags = split_lora_tags(parsed.prompt)
    paths = listing("Lora paths")
    if len(paths) == len(tags):  # our own text: the LoRAs as they were named
        tags = [(str(path), weight) for path, (_name, weight) in zip(paths, tags, strict=True)]
    request = Request(
        engine=engine,
        model=model,
        prompt=prompt,
        negative_prompt=parsed.negative_prompt,
        seed=number("Seed", int, d.seed),
        steps=number("Steps", int, d.steps),
        guidance=number("CFG scale", float, d.guidance),
        width=width,
        height=height,
        scheduler=scheduler_from_a1111(f["Sampler"], f.get("Schedule type"))
        if "Sampler" in f
        else d.scheduler,
        strength=number("Denoising strength", float, d.strength),
        tiling=flag("Tiling"),
        variation_seed=number("Variation seed", int, None),
        variation_strength=number("Variation seed strength", float, d.variation_strength),
        prompt_b=f.get("Prompt B", ""),
        blend=number("Prompt blend", float, d.blend),
        concepts=concepts,
        loras=tuple(Lora(name, weight) for name, weight in tags),
        preview=f.get("Preview", d.preview).strip(),
        locality=number("Locality", float, d.locality),
        reference_weights=weights,
        patch_mode=f.get("Patch mode", d.patch_mode).strip(),
        exact=flag("Exact"),
        grid=_grid(f),
        upscale=_upscale(f),
        structure=number("Structure", float, d.structure),
        structure_steps=number("Structure steps", float, d.structure_steps),
        colour_pins=pins,
    )
    bad = non_finite(request)
    if bad:  # `CFG scale: nan` parses as a float; it is no setting anyone can run
        raise RecipeError(f"A1111 parameters: the {bad[0]} is not a finite number")
    extras: dict[str, Any] = {}
    if f.get("Model hash"):
        extras["model_hash"] = f["Model hash"].strip()
    if f.get("Model"):
        extras["model_name"] = f["Model"].strip()
    if f.get("Lora hashes"):
        pairs = (item.split(":", 1) for item in f["Lora hashes"].split(",") if ":" in item)
        extras["lora_hashes"] = {name.strip(): digest.strip() for name, digest in pairs}
    return request, extras
