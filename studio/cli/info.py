"""`studio-cli info IMAGE`: an image's recipe, provenance and lineage chain, for a person or as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from backend import strict_json
from studio.a1111 import to_a1111
from studio.files.pngmeta import PngMetadata, read_png_metadata
from studio.recipe import provenance_to_dict, request_to_dict


def run(args: argparse.Namespace) -> int:
    """`studio-cli info IMAGE [--json]`."""
    meta = read_png_metadata(args.image)
    print(describe_json(args.image, meta) if args.json else describe(args.image, meta))
    return 0


def describe_json(path: str, meta: PngMetadata) -> str:
    """Everything `info` knows about an image as one JSON object (images in the request by digest)."""
    return strict_json.dumps(
        {
            "file": str(path),
            "size": list(meta.size),
            "digest": meta.digest,
            "recipe_from": meta.recipe_from,
            "source_type": meta.source_type,
            "edited": meta.edited,
            "parameters": meta.parameters,
            "request": request_to_dict(meta.request, images=False) if meta.request else None,
            "extras": meta.extras,
            "lineage": provenance_to_dict(meta.provenance) if meta.provenance else None,
            "notes": list(meta.notes),
        },
        ensure_ascii=False,
        indent=1,
    )


def describe(path: str, meta: PngMetadata) -> str:
    """A person's view of an image's recipe, provenance and lineage chain."""
    lines = [f"image       {path}  ({meta.size[0]}×{meta.size[1]})"]
    sources = {"studio": "studio recipe (re-runs exactly)", "a1111": "A1111 parameters only (no images)"}
    lines.append(f"recipe      {sources.get(meta.recipe_from or '', 'none: no generation metadata found')}")
    if meta.source_type:
        lines.append(f"source      {meta.source_type.rsplit('/', 1)[-1]} (IPTC digital source type)")
    p = meta.provenance
    if p is not None:
        lines.append(f"id          {p.id}")
        lines.append(f"parents     {', '.join(p.parents) or 'none'}")
        lines.append(f"painted     {'yes: a person painted on it or composited it' if p.painted else 'no'}")
    if meta.edited is not None:
        lines.append(f"pixels      {'CHANGED since export' if meta.edited else 'unchanged since export'}")
    r = meta.request
    if r is not None:
        x = meta.extras
        lines.append(f"engine      {r.engine}")
        model = x.get("model_name") or x.get("model") or r.model or "(default references)"
        lines.append(f"model       {model}" + (f"  (hash {x['model_hash']})" if x.get("model_hash") else ""))
        if x.get("licence"):
            lines.append(f"licence     {x['licence']}")
        shares = x.get("reference_shares")
        if isinstance(shares, dict):  # from a file: keep only well-formed entries
            top = sorted(
                ((n, s) for n, s in shares.items() if isinstance(s, (int, float))), key=lambda kv: -kv[1]
            )
            if top:
                lines.append("references  " + ", ".join(f"{n} {s:.0%}" for n, s in top))
        held = [
            f"{n} {pic.width}×{pic.height}"
            for n, pic in (("init image", r.init_image), ("mask", r.mask))
            if pic
        ]
        if held:
            lines.append(f"embedded    {', '.join(held)}")
        lines.append("parameters")
        lines.extend("  " + line for line in (meta.parameters or to_a1111(r, meta.extras)).split("\n"))
    if p is not None and p.chain:
        lines.append("chain       nearest first")
        for n, a in enumerate(p.chain, 1):
            lines.append(
                f"  {n}. {a.id}{'  painted' if a.painted else ''}  parents: {', '.join(a.parents) or 'none'}"
            )
            lines.append(f"     {_summary(a.recipe)}")
    lines.extend(f"note        {note}" for note in meta.notes)
    return "\n".join(lines)


def _summary(compact: dict[str, Any] | None) -> str:
    if not compact or not isinstance(compact.get("request"), dict):
        return "(no recipe: an image from outside the studio)"
    q = compact["request"]
    prompt = str(q.get("prompt", ""))
    prompt = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    steps = f"{q.get('steps')} steps"
    return f'{q.get("engine")}: "{prompt}" seed {q.get("seed")}, {steps}, {q.get("scheduler")}'
