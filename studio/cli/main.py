"""The headless command line: `studio-cli generate`, `studio-cli info IMAGE`, `studio-cli models`.

Every failure a person can cause (bad arguments, bad files, a model that will not load) ends with one
line on stderr and a non-zero exit, never a traceback; set STUDIO_DEBUG=1 to see tracebacks anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from PIL import Image

from backend import strict_json
from backend.cli_numbers import finite_number
from backend.engine import Engine
from backend.errors import StudioError
from backend.images import Picture, load_picture
from backend.request import DEFAULT_SIZE, MAX_SEED, Request
from studio.cli import adapters as cli_adapters
from studio.cli import grid as cli_grid
from studio.cli import info as cli_info
from studio.cli import outpaint as cli_outpaint
from studio.cli import upscale as cli_upscale
from studio.files.pngmeta import PngMetadata, read_png_metadata, save_png
from studio.prompts import clean_prompt
from studio.recipe import MAX_CHAIN, Ancestor, Provenance, compact_recipe

PROG = "studio-cli"
_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class UsageError(StudioError):
    """A bad command line: exit status 2, like argparse."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage over several lines; we want one
        raise UsageError(f"{message} (see {self.prog} --help)")


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise ValueError(text)
    return value


def _pin(text: str) -> tuple[str, str]:
    colour, sep, reference = text.partition("=")
    colour = colour.strip() if colour.strip().startswith("#") else "#" + colour.strip()
    if not sep or not reference.strip() or len(colour) != 7:
        raise ValueError(text)
    int(colour[1:], 16)
    return colour.lower(), reference.strip()


_pin.__name__ = "colour pin (like '#f0c828=hammered_gold')"  # argparse names the type in its error


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Studio without the window: generate images, read their recipes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,info,models}")

    g = sub.add_parser("generate", help="generate an image and save it as a PNG with its recipe")
    g.add_argument("--prompt", help="what to make")
    g.add_argument("--negative", help="what to avoid")
    g.add_argument(
        "--engine", choices=("patch", "diffusers"), help="default: patch, or diffusers with --model"
    )
    g.add_argument(
        "--model", help="diffusers folder, .safetensors file or hub id (implies --engine diffusers)"
    )
    g.add_argument("--references", metavar="DIR", help="patch engine: a folder of reference images")
    g.add_argument("--seed", type=_seed, help="default: a random seed")
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=finite_number)
    g.add_argument("--width", type=int, help="default: 256 (patch), 512 (diffusers), or the init image's")
    g.add_argument("--height", type=int, help="default: 256 (patch), 512 (diffusers), or the init image's")
    g.add_argument("--scheduler", help="euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, lcm, ...")
    g.add_argument("--init-image", metavar="IMAGE", help="start from this image (img2img)")
    g.add_argument("--strength", type=finite_number, help="how much of the init image to repaint, 0 to 1")
    g.add_argument("--mask", metavar="IMAGE", help="inpaint: white repaints, black keeps")
    g.add_argument("--tile", action=argparse.BooleanOptionalAction, default=None, help="seamless tiling")
    g.add_argument("--variation-seed", type=_seed, help="default with a strength: the seed + 1")
    g.add_argument(
        "--variation-strength", type=finite_number, help="0 = the seed's image, 1 = the variation seed's"
    )
    g.add_argument(
        "--locality", type=finite_number, help="patch engine: 0 makes new images, 1 reproduces references"
    )
    g.add_argument(
        "--structure",
        type=finite_number,
        help="patch engine with an init image: low-pass size kept from it, 0 exact colours to 1 broad layout",
    )
    g.add_argument(
        "--structure-steps",
        type=finite_number,
        help="fraction of the steps the structure applies to (0 = off)",
    )
    g.add_argument(
        "--pin",
        action="append",
        type=_pin,
        metavar="COLOUR=REFERENCE",
        help="patch engine with an init image: paint this sketch colour in this reference, e.g. "
        "'#f0c828=hammered_gold' ('=sketch' keeps it as drawn); repeat for more colours",
    )
    g.add_argument("--device", help="cpu, cuda, mps (default: automatic)")
    g.add_argument(
        "--remote", metavar="URL", help="run on a studio server (studio-serve), e.g. http://gpu-box:8188"
    )
    g.add_argument("--token", help="the server's access token (default: $STUDIO_SERVER_TOKEN)")
    g.add_argument(
        "--model-folder", action="append", default=[], metavar="DIR", help="also look for models here"
    )
    g.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle files (.ckpt, .pt, .pth, .bin) for the model, ControlNets, LoRAs and upscaler; "
        "they are read with torch's weights-only loader, which refuses code, but .safetensors is safer",
    )
    g.add_argument("--recipe", metavar="IMAGE", help="re-run the recipe in IMAGE; other options override it")
    g.add_argument("--out", metavar="PNG", help="default: studio-SEED.png in the current folder")
    g.add_argument("--events", action="store_true", help="print one JSON line per step on stdout")
    g.add_argument("--preview-dir", metavar="DIR", help="save every preview frame in DIR")
    g.add_argument(
        "--attribution", metavar="PNG", help="patch engine: save the map of which reference fed each pixel"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cli_grid.add_arguments(g)
    cli_upscale.add_arguments(g)
    cli_outpaint.add_arguments(g)
    cli_adapters.add_arguments(g)
    g.set_defaults(run=_generate)

    i = sub.add_parser("info", help="print an image's recipe, provenance and lineage chain")
    i.add_argument("image", metavar="IMAGE")
    i.add_argument("--json", action="store_true", help="print it all as one JSON object")
    i.set_defaults(run=cli_info.run)

    m = sub.add_parser("models", help="list the models found on this machine")
    m.add_argument("--model-folder", action="append", default=[], metavar="DIR", help="also look here")
    m.add_argument("--no-hub", action="store_true", help="skip the Hugging Face cache")
    kinds = m.add_mutually_exclusive_group()
    kinds.add_argument("--controlnets", action="store_true", help="list ControlNets instead of checkpoints")
    kinds.add_argument("--loras", action="store_true", help="list LoRAs instead of checkpoints")
    m.add_argument(
        "--lora-folder", action="append", default=[], metavar="DIR", help="also look for LoRAs here"
    )
    m.set_defaults(run=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad usage, 130 interrupted)."""
    debug = bool(os.environ.get("STUDIO_DEBUG"))
    if not debug:  # transformers and diffusers log advice at import; a terminal wants one line per failure
        for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(name, "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        with warnings.catch_warnings():
            if not debug:  # library warnings are noise to a person at a terminal
                warnings.simplefilter("ignore")
            args = _parser().parse_args(argv)
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        _fail(f"{PROG}: {exc}")
        return 2
    except StudioError as exc:
        _fail(f"{PROG}: error: {exc}")
        return 1
    except BrokenPipeError:  # `studio-cli ... | head`: the reader left; nothing to say
        with contextlib.suppress(OSError):  # and nothing for Python to complain about at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        _fail(f"{PROG}: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
        return 1
    except Exception as exc:
        if debug:
            raise
        _fail(f"{PROG}: internal error: {exc.__class__.__name__}: {exc} (STUDIO_DEBUG=1 shows details)")
        return 1


def _fail(line: str) -> None:
    print(" ".join(line.split()), file=sys.stderr)  # one line, whatever the message held


# -------------------------------------------------------------------------------------------- generate


def _generate(args: argparse.Namespace) -> int:
    recipe_meta = _read_recipe(args.recipe) if args.recipe else None
    base = (
        recipe_meta.request if recipe_meta and recipe_meta.request else Request(seed=secrets.randbelow(2**32))
    )
    request, init_meta = build_request(args, base, recipe_given=bool(recipe_meta and recipe_meta.request))
    if args.attribution and request.engine != "patch":
        raise UsageError("--attribution needs the patch engine")
    try:
        request = cli_upscale.with_upscale(args, cli_grid.grid_for(args, request))
        request = cli_outpaint.outpaint(args, request)
    except (cli_grid.GridUsageError, cli_upscale.UpscaleUsageError, cli_outpaint.OutpaintUsageError) as exc:
        raise UsageError(str(exc)) from None
    request.validate()  # a bad grid value is named before torch loads
    out = Path(args.out) if args.out else _free_name(Path(f"studio-{request.seed}.png"))
    if args.preview_dir:
        Path(args.preview_dir).mkdir(parents=True, exist_ok=True)

    from backend.events import Done, StepEvent

    if request.engine == "patch" and not args.remote:  # a server's references are on the server
        request.validate()  # a bad value is the one line to print, not what the references would be
        _say_references(request, quiet=args.quiet)

    cancel = threading.Event()
    bar = Progress(sys.stderr, enabled=not args.quiet)
    done = None
    events = _engine(args, request).generate(request, cancel)
    try:
        for event in events:
            if isinstance(event, StepEvent):
                bar.update(event.step, event.total, event.elapsed_s)
                if args.events:
                    step = {
                        "step": event.step,
                        "total": event.total,
                        "elapsed_ms": round(event.elapsed_s * 1000, 1),
                    }
                    print(strict_json.dumps(step), flush=True)
                if args.preview_dir and event.preview is not None:
                    path = Path(args.preview_dir) / f"step-{event.step:03d}.png"
                    Image.fromarray(event.preview).save(path, compress_level=1)
            elif isinstance(event, Done):
                done = event
    finally:
        cancel.set()
        getattr(events, "close", lambda: None)()
        bar.finish()
    if done is None:
        raise StudioError("the engine stopped without an image")

    if done.request.grid is not None:
        # The cells when a batch asked for them, --out names where, or nothing else would be written;
        # the labelled grid with --grid-out.
        cells = bool(args.out or args.batch or args.variations or not args.grid_out)
        for path in cli_grid.write_grid(
            args,
            out if cells else None,
            done,
            lambda image, request: lineage_for(image, request, recipe_meta, init_meta),
            cells,
        ):
            print(str(path), file=sys.stderr if args.events else sys.stdout)
        return 0
    provenance = lineage_for(Picture(done.image), done.request, recipe_meta, init_meta)
    save_png(out, done.image, done.request, done.extras, provenance)
    if args.attribution and done.attribution is not None:
        from backend.attribution import attribution_sheet

        attribution_sheet(done.attribution, list(done.extras.get("references", []))).save(args.attribution)
    print(str(out), file=sys.stderr if args.events else sys.stdout)
    return 0


def _engine(args: argparse.Namespace, request: Request) -> Engine:
    """The engine the options name: a studio server's, or the local engines."""
    if args.remote:
        from backend.remote import RemoteEngine

        if args.device:
            raise UsageError("--device is for local runs; the server picks its own device")
        token = args.token or os.environ.get("STUDIO_SERVER_TOKEN", "")
        if not token:
            raise UsageError("--remote needs the server's token: --token or $STUDIO_SERVER_TOKEN")
        from backend.engines import Engines

        engines = Engines(**_local_options(args, request))  # grids and upscales split here, run there
        engines.use_remote(RemoteEngine(args.remote, token))
        return engines
    from backend.engines import Engines  # torch loads here, after the arguments are known to be good

    return Engines(**_local_options(args, request))


def _local_options(args: argparse.Namespace, request: Request) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.engine == "diffusers" or request.upscale is not None:  # they look models up by name
        options["model_folders"] = _model_folders(args)
        options["lora_folders"] = cli_adapters.lora_folders(args)
    if args.device:
        options["device"] = args.device
    if args.allow_pickle:
        options["allow_pickle"] = True
    return options


def _say_references(request: Request, quiet: bool) -> None:
    """Before a patch run: which references the prompt chose and their shares; words that chose none."""
    from backend.references import DEFAULT_FOLDER, load_references, match_prompt, selection_summary

    refs = load_references(request.model or DEFAULT_FOLDER)
    for skipped in refs.skipped:
        print(f"{PROG}: warning: skipped {skipped}", file=sys.stderr)
    chosen, note = selection_summary(refs, match_prompt(refs, request.prompt, request.negative_prompt))
    if not quiet:
        print(f"{PROG}: references {chosen}", file=sys.stderr)
    if note:
        print(f"{PROG}: note: {note}", file=sys.stderr)


def _read_recipe(path: str) -> PngMetadata:
    meta = read_png_metadata(path)
    if meta.request is None:
        why = "; ".join(meta.notes) or "it carries no recipe"
        raise StudioError(f"{path}: no recipe to re-run ({why})")
    return meta


def _free_name(path: Path) -> Path:
    """The default output name, numbered so an earlier result is never overwritten."""
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def build_request(
    args: argparse.Namespace, base: Request, recipe_given: bool = False
) -> tuple[Request, PngMetadata | None]:
    """The request the options describe over `base` (a recipe's or the defaults), and the init's metadata."""
    changes: dict[str, Any] = {}
    for option, name in (
        ("prompt", "prompt"),
        ("negative", "negative_prompt"),
        ("seed", "seed"),
        ("steps", "steps"),
        ("guidance", "guidance"),
        ("scheduler", "scheduler"),
        ("strength", "strength"),
        ("tile", "tiling"),
        ("variation_seed", "variation_seed"),
        ("variation_strength", "variation_strength"),
        ("locality", "locality"),
        ("structure", "structure"),
        ("structure_steps", "structure_steps"),
    ):
        if getattr(args, option) is not None:
            changes[name] = getattr(args, option)
    for name in ("prompt", "negative_prompt"):  # where typed text enters: no control characters, capped
        if name in changes:
            changes[name], notice = clean_prompt(changes[name])
            if notice:
                print(f"{PROG}: note: {notice}", file=sys.stderr)
    if args.pin:
        changes["colour_pins"] = tuple(args.pin)
    if args.variation_strength and args.variation_seed is None and base.variation_seed is None:
        changes["variation_seed"] = (changes.get("seed", base.seed) + 1) % (MAX_SEED + 1)
    changes.update(_engine_and_model(args, base))
    try:
        changes.update(cli_adapters.changes(args, base, changes))
    except cli_adapters.AdapterUsageError as exc:
        raise UsageError(str(exc)) from None

    init_meta = None
    init = base.init_image
    if args.init_image:
        init = load_picture(args.init_image)
        init_meta = read_png_metadata(args.init_image)  # its lineage: the new image's parent
    width, height = _size(
        args, base if recipe_given else _default_size(changes.get("engine", base.engine)), init
    )
    changes.update(width=width, height=height)
    if init is not None:
        if base.upscale is not None or getattr(args, "upscale", None) or getattr(args, "expand", None):
            changes["init_image"] = init  # the image to upscale keeps its own size (studio/cli/upscale.py)
        else:
            changes["init_image"] = _resized(init, width, height, "init image", args.init_image is not None)
    mask = load_picture(args.mask, mask=True) if args.mask else base.mask
    if mask is not None:
        changes["mask"] = _resized(mask, width, height, "mask", bool(args.mask))
    return base.replace(**changes), init_meta


def _engine_and_model(args: argparse.Namespace, base: Request) -> dict[str, Any]:
    if args.references and args.engine == "diffusers":
        raise UsageError("--references is for the patch engine; the diffusers engine takes --model")
    if args.references and args.model:
        raise UsageError("give --references (patch engine) or --model (diffusers), not both")
    if args.references and getattr(args, "remote", None):  # a reference set the server lists, by name
        return {"engine": "patch", "model": args.references}
    if args.references:
        folder = Path(args.references).expanduser()
        if not folder.is_dir():
            raise StudioError(f"reference folder {args.references}: no such folder")
        return {"engine": "patch", "model": str(folder)}
    engine = args.engine or ("diffusers" if args.model else None)
    if args.model and getattr(args, "remote", None):  # a model the server lists, by name
        return {"engine": engine, "model": args.model}
    if args.model:
        path = Path(args.model).expanduser()
        if path.exists():
            return {"engine": engine, "model": str(path)}
        # Say so before loading torch and diffusers; a bare name may still be a discovered model.
        m = args.model
        if (
            m.lower().endswith(_MODEL_SUFFIXES)
            or m.startswith((".", "/", "~"))
            or "\\" in m
            or m.count("/") > 1
        ):
            raise StudioError(f"model {m}: no such file or folder")
        return {"engine": engine, "model": m}
    if engine is None or engine == base.engine:
        return {}
    return {"engine": engine, "model": ""}  # switching engine: the other engine's model means nothing here


def _default_size(engine: str) -> Request:
    side = DEFAULT_SIZE.get(engine, 512)
    return Request(engine=engine, width=side, height=side)


def _size(args: argparse.Namespace, base: Request, init: Picture | None) -> tuple[int, int]:
    """The requested size; a new init image sets what was not given, keeping its proportions."""
    width, height = args.width, args.height
    if init is not None and args.init_image and (width is None or height is None):
        if width is None and height is None:
            width, height = init.width, init.height
        elif width is None:
            width = round(init.width * height / init.height)
        else:
            height = round(init.height * width / init.width)
        width, height = max(8, width // 8 * 8), max(8, height // 8 * 8)  # the engines need multiples of 8
    return (width if width is not None else base.width, height if height is not None else base.height)


def _resized(picture: Picture, width: int, height: int, what: str, tell: bool) -> Picture:
    if (picture.width, picture.height) == (width, height):
        return picture
    if tell:
        print(
            f"{PROG}: note: {what} resized from {picture.width}×{picture.height} to {width}×{height}",
            file=sys.stderr,
        )
    resample = Image.Resampling.BILINEAR if picture.is_mask else Image.Resampling.LANCZOS
    return Picture.from_pil(picture.to_pil().resize((width, height), resample), mask=picture.is_mask)


def lineage_for(
    image: Picture, request: Request, recipe: PngMetadata | None, init: PngMetadata | None
) -> Provenance:
    """The new image's provenance: named by its pixels, with the images it came from as parents.

    An init image is a parent; so is a recipe image whose recipe was changed (a variation). A recipe re-run
    unchanged keeps the original's lineage. A parent whose pixels changed since it was exported was
    painted on in between.
    """
    own_id = image.digest[:16]
    parents: list[str] = []
    chain: list[Ancestor] = []
    painted = False
    if recipe is not None and recipe.request is not None:
        if recipe.request == request and recipe.provenance is not None:  # a plain re-run: same lineage
            parents.extend(recipe.provenance.parents)
            chain.extend(recipe.provenance.chain)
            painted = recipe.provenance.painted
        else:
            ancestor = _ancestor(recipe)
            parents.append(ancestor.id)
            chain.append(ancestor)
            chain.extend(recipe.provenance.chain if recipe.provenance else ())
            painted = painted or bool(recipe.edited)
    if init is not None and request.init_image is not None:
        ancestor = _ancestor(init)
        parents.insert(0, ancestor.id)
        chain.insert(0, ancestor)
        chain.extend(init.provenance.chain if init.provenance else ())
        painted = painted or bool(init.edited)
    unique: dict[str, Ancestor] = {}
    for a in chain:
        unique.setdefault(a.id, a)
    return Provenance(own_id, tuple(dict.fromkeys(parents)), painted, tuple(unique.values())[:MAX_CHAIN])


def _ancestor(meta: PngMetadata) -> Ancestor:
    recipe = compact_recipe(meta.request, meta.extras) if meta.request is not None else None
    if meta.provenance is not None:
        p = meta.provenance
        return Ancestor(p.id, p.parents, p.painted or bool(meta.edited), recipe)
    return Ancestor(meta.digest[:16], (), False, recipe)  # an image from elsewhere: named by its pixels


class Progress:
    """A one-line text progress bar, redrawn in place, at most ten times a second."""

    def __init__(self, stream: TextIO, enabled: bool = True, width: int = 30) -> None:
        self.stream, self.enabled, self.width = stream, enabled, width
        self._drawn = 0.0
        self._shown = False

    def update(self, step: int, total: int, elapsed_s: float) -> None:
        """Draw step of total."""
        now = time.monotonic()
        if not self.enabled or (step < total and now - self._drawn < 0.1):
            return
        self._drawn, self._shown = now, True
        filled = round(self.width * step / max(total, 1))
        per = elapsed_s / max(step, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {step}/{total}  {elapsed_s:.1f} s  {per:.2f} s/step")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line so what follows starts on its own."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


# ------------------------------------------------------------------------------------------ info, models


def _model_folders(args: argparse.Namespace) -> tuple[str, ...]:
    """The folders given on the command line, then those the person added in the window's settings."""
    folders = list(args.model_folder)
    try:
        from studio.settings import Settings

        folders += Settings().model_folders
    except Exception:  # no Qt, or unreadable settings: the command line's folders are enough
        pass
    return tuple(dict.fromkeys(folders))


def _models(args: argparse.Namespace) -> int:
    if cli_adapters.list_models(args, _model_folders(args)):
        return 0
    from backend.models import discover

    found = discover(_model_folders(args), include_hub=not args.no_hub)
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        note = f"  ({cli_adapters.PICKLE_NOTE})" if m.pickle else ""
        licence = f"  licence: {m.licence}" if m.licence else ""
        print(f"{m.name:<{width}}  {m.kind:<6}  {m.path}{note}{licence}")
    cli_adapters.say_how_to_allow_pickles(found)
    if not found:
        print("no models found; add a folder with --model-folder, or give --model a path", file=sys.stderr)
    return 0
