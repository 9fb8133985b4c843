"""The strict creativity check of tests/test_patch_quality.py, for fast-path settings and the exact path.

    python bench/bench_creativity.py                # default fast path, more luminance frequencies, exact

The check: at 64², 12 steps, for "jewelry", "fabric", "brick" and "denim" (seeds 0 and 1), an image's 7, 11
and 15 px patches must lie nearer the references' patches (mean RMS distance to the nearest one, 0–1
scale) than the same image blurred (σ 2) does; "fails" counts the (prompt, seed, size) triples where they do
not. "copy" is the shift-invariant copy distance the same tests bound from the other side (> 0.015: no
shifted crop of a reference). Variants: the engine as it ships; the fast path keeping at least 16 (or all)
luminance frequencies per axis of a patch (`els_fast.kept_freqs`); every frequency and no principal axes;
the exact path (`Request.exact`). Prints a table with CPU seconds per variant (one torch thread), and for
the fast paths those of issue 11's default first image (256², 12 steps), and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_patch import publish  # noqa: E402
from test_patch_quality import (  # noqa: E402
    CREATIVE_PROMPTS,
    PATCH_SIZES,
    as_tensor,
    copy_distance,
    fitted_references,
    patch_distance,
    smooth,
)

from backend import els, els_fast  # noqa: E402
from backend.patch_engine import PatchEngine  # noqa: E402
from backend.request import Request  # noqa: E402


def at_least(lowest: int) -> Callable[[int], tuple[int, int]]:
    """A `kept_freqs` keeping at least `lowest` luminance frequencies per axis (all of a smaller patch)."""

    def kept(k: int) -> tuple[int, int]:
        luma = min(32, k, max(lowest, k // 2))
        return luma, max(3, luma // 3)

    return kept


VARIANTS: dict[str, tuple[dict, Callable | None, bool]] = {
    # name: (extra fast_patch_attention options, kept_freqs replacement, exact path)
    "fast path as shipped": ({}, None, False),
    "fast, ≥ 16 luminance frequencies": ({}, at_least(16), False),
    "fast, all luminance frequencies": ({"freqs": 1 << 10}, None, False),
    "fast, every frequency, no axes": (
        {"freqs": 1 << 10, "chroma_freqs": 1 << 10, "dims": None},
        None,
        False,
    ),
    "exact path": ({}, None, True),
}


def default_image_seconds(engine: PatchEngine) -> float:
    """CPU seconds of issue 11's default first image (256², 12 steps), after a warm-up run."""
    list(engine.generate(Request(width=256, height=256, steps=1, seed=1), threading.Event()))
    start = time.process_time()
    list(engine.generate(Request(width=256, height=256, steps=12, seed=0), threading.Event()))
    return time.process_time() - start


def run_variant(
    options: dict, kept: Callable | None, exact: bool
) -> tuple[list[str], int, float, float | None]:
    real_attention, real_kept = els.fast_patch_attention, els_fast.kept_freqs
    els.fast_patch_attention = functools.partial(real_attention, **options)  # the engine calls it via els
    if kept is not None:
        els_fast.kept_freqs = kept
    try:
        engine, rows, fails = PatchEngine(), [], 0
        start = time.process_time()
        for prompt in CREATIVE_PROMPTS:
            for seed in (0, 1):
                request = Request(width=64, height=64, steps=12, seed=seed, prompt=prompt, exact=exact)
                done = list(engine.generate(request, threading.Event()))[-1]
                image, refs = as_tensor(done.image), fitted_references(engine, done)
                mine = [patch_distance(image, refs, k) for k in PATCH_SIZES]
                blurred = [patch_distance(smooth(image), refs, k) for k in PATCH_SIZES]
                lost = [k for k, m, b in zip(PATCH_SIZES, mine, blurred, strict=True) if m >= b]
                fails += len(lost)
                rows.append(
                    f"{prompt} {seed}: {' / '.join(f'{m:.3f}' for m in mine)} against "
                    f"{' / '.join(f'{b:.3f}' for b in blurred)}, copy {copy_distance(image, refs):.3f}"
                    + (f", fails at {', '.join(str(k) for k in lost)} px" if lost else "")
                )
        seconds = time.process_time() - start
        return rows, fails, seconds, None if exact else default_image_seconds(engine)
    finally:
        els.fast_patch_attention, els_fast.kept_freqs = real_attention, real_kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = ["| variant | fails (of 24) | CPU s, the 8 runs | CPU s, 256² 12 steps |", "|---|---|---|---|"]
    details = []
    for name, (options, kept, exact) in VARIANTS.items():
        rows, fails, seconds, default = run_variant(options, kept, exact)
        table.append(f"| {name} | {fails} | {seconds:.1f} | {'—' if default is None else f'{default:.2f}'} |")
        details += [f"- {name}:"] + [f"  - {row}" for row in rows]
        print(table[-1], flush=True)
    publish(
        "Strict creativity check per variant, 64², 12 steps",
        ". Per image: 7 / 11 / 15 px patch distance against the blurred image's, and the copy distance.",
        [*table, "", "<details><summary>per image</summary>", "", *details, "", "</details>"],
        args.no_append,
    )


if __name__ == "__main__":
    main()
