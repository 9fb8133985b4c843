"""The command line's ControlNet and LoRA options.

`--controlnet PATH` (repeatable) names the ControlNet weights and
`--control KIND:IMAGE[:STRENGTH[:START:END]]` (repeatable, in the same order) each one's input;
`--lora PATH_OR_NAME[:STRENGTH]` (repeatable) adds a LoRA, as does an A1111 `<lora:NAME:STRENGTH>` tag in
`--prompt`. `studio-cli models --controlnets/--loras` lists what is found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from backend.errors import StudioError
from backend.images import load_picture
from backend.prompt_syntax import split_lora_tags
from backend.request import CONTROL_KINDS, Control, Lora, Request

if TYPE_CHECKING:
    from backend.models import ModelInfo  # torch loads only once the arguments are known to be good


class AdapterUsageError(StudioError):
    """ControlNet or LoRA options that cannot be read (the CLI turns it into a usage error)."""


def add_arguments(g: argparse.ArgumentParser) -> None:
    """The ControlNet and LoRA options of `generate`."""
    g.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="PATH",
        help="ControlNet weights (diffusers folder, .safetensors file or a name in the model folders); "
        "one per --control, in the same order",
    )
    g.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="KIND:IMAGE[:STRENGTH[:START:END]]",
        help=f"a control image; KIND is one of {', '.join(CONTROL_KINDS)} (raw, depth and pose pass the "
        "image unchanged); START and END are fractions of the steps",
    )
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH_OR_NAME[:STRENGTH]",
        help="a LoRA file, or its name in models/Lora, models/loras or the settings' LoRA folders",
    )
    g.add_argument(
        "--lora-folder", action="append", default=[], metavar="DIR", help="also look for LoRAs here"
    )


def parse_control(text: str, model: str) -> Control:
    """One `--control` value for the ControlNet `model`."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise AdapterUsageError(f"--control {text}: expected KIND:IMAGE[:STRENGTH[:START:END]]")
    if kind not in CONTROL_KINDS:
        raise AdapterUsageError(
            f"--control {text}: unknown kind {kind!r}; choose one of {', '.join(CONTROL_KINDS)}"
        )
    image, numbers = _peel_numbers(rest, (3, 1))
    strength, start, end = (numbers + [1.0, 0.0, 1.0][len(numbers) :]) if numbers else (1.0, 0.0, 1.0)
    return Control(model, kind, load_picture(image), strength, start, end)


def parse_lora(text: str) -> Lora:
    """One `--lora` value."""
    name, numbers = _peel_numbers(text, (1,))
    if not name:
        raise AdapterUsageError(f"--lora {text}: expected PATH_OR_NAME[:STRENGTH]")
    return Lora(name, numbers[0] if numbers else 1.0)


def _peel_numbers(text: str, counts: tuple[int, ...]) -> tuple[str, list[float]]:
    """`text` without its last N `:number` fields, for the first N in `counts` that are all numbers.

    Peeling from the right keeps a Windows drive letter or a colon inside a file name with the name.
    """
    parts = text.split(":")
    for n in counts:
        if len(parts) > n:
            try:
                numbers = [float(p) for p in parts[-n:]]
            except ValueError:
                continue
            return ":".join(parts[:-n]), numbers
    return text, []


def changes(args: argparse.Namespace, base: Request, so_far: dict[str, Any]) -> dict[str, Any]:
    """The request fields the ControlNet and LoRA options set: controls, loras, and a prompt without tags."""
    out: dict[str, Any] = {}
    if args.control or args.controlnet:
        if len(args.control) != len(args.controlnet):
            raise AdapterUsageError(
                f"give one --controlnet per --control, in the same order (got {len(args.controlnet)} "
                f"--controlnet and {len(args.control)} --control)"
            )
        out["controls"] = tuple(
            parse_control(c, m) for c, m in zip(args.control, args.controlnet, strict=True)
        )
    loras = [parse_lora(x) for x in args.lora]
    if "prompt" in so_far:
        try:
            out["prompt"], tags = split_lora_tags(so_far["prompt"])
        except StudioError as exc:
            raise AdapterUsageError(str(exc)) from None
        loras = [Lora(name, strength) for name, strength in tags] + loras
    if loras:
        if len({x.name for x in loras}) != len(loras):
            raise AdapterUsageError("a LoRA is named twice (in --lora or a <lora:> tag); give it once")
        out["loras"] = tuple(loras)
    if (out.get("controls") or out.get("loras")) and so_far.get("engine", base.engine) != "diffusers":
        raise AdapterUsageError("ControlNets and LoRAs need the diffusers engine: give --model")
    return out


def lora_folders(args: argparse.Namespace) -> tuple[str, ...]:
    """LoRA folders given on the command line, then those added in the window's settings."""
    folders = list(getattr(args, "lora_folder", []))
    try:
        from studio.settings import Settings

        folders += Settings().lora_folders
    except Exception:  # no Qt, or unreadable settings: the command line's folders are enough
        pass
    return tuple(dict.fromkeys(folders))


PICKLE_NOTE = "pickle: refused unless allowed"


def say_how_to_allow_pickles(found: Sequence[ModelInfo]) -> None:
    """After a listing with pickle files in it: how to use them, and what that risks (on stderr)."""
    if any(m.pickle for m in found):
        print(
            "pickle files can carry code: they load only with generate --allow-pickle (in the window: "
            "Models → Allow pickle model files), read by torch's weights-only loader, which refuses code; "
            "a .safetensors version is safer",
            file=sys.stderr,
        )


def list_models(args: argparse.Namespace, model_folders: tuple[str, ...]) -> bool:
    """Print the ControlNets or LoRAs found, when `models` was asked for them; False otherwise."""
    if not (args.controlnets or args.loras):
        return False
    if args.controlnets:
        from backend.controlnets import discover_controlnets

        found = discover_controlnets(model_folders, include_hub=not args.no_hub)
    else:
        from backend.loras import discover_loras

        found = discover_loras(model_folders, lora_folders(args))
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        note = f"  ({PICKLE_NOTE})" if m.pickle else ""
        print(f"{m.name:<{width}}  {m.kind:<6}  {m.path}{note}")
    say_how_to_allow_pickles(found)
    if not found:
        what = "ControlNets" if args.controlnets else "LoRAs"
        print(f"no {what} found; add a folder with --model-folder", file=sys.stderr)
    return True
