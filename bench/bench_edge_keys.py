"""How many keys the fast path's edge rows need: their error and time against the interior's, per share.

    python bench/bench_edge_keys.py                 # 128² and 256², 12 steps, the 32 shipped references

Pixels within k//2 of an edge match only keys on their own row (the paper's border rule), so each edge
row samples its keys from a pool of about N·W positions, where the interior samples from N·W². The script
runs the engine (default request, one torch thread) and records the noisy image, time, patch size and
reference shares at each full-size step; on each it takes the fast estimate with the edge rows given
1, ½ and ¼ of the interior's key budget (`els_fast.EDGE_KEYS`), and compares it on edge and interior
pixels with a reference estimate that samples 16× the keys (edge rows take every position of their pool
that fits). Errors are mean absolute differences on a 0–1 scale, averaged over two key seeds of each
estimate against two of the reference; "floor" is the reference against itself across its two seeds (the
sampling noise left in it). Times are CPU seconds of one estimate. Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_patch import publish  # noqa: E402

from backend import els  # noqa: E402
from backend.patch_engine import PatchEngine  # noqa: E402
from backend.request import Request  # noqa: E402

SHARES = (1.0, 0.5, 0.25)
SEEDS = (1, 2)


def full_size_steps(engine: PatchEngine, size: int, steps: int) -> list[dict]:
    """The inputs of the engine's fast estimate at each step that runs at the request's full size."""
    seen: list[dict] = []
    real = els.fast_patch_attention

    def spy(x, refs, a, b, k, borders, prior, generator, **options):
        if x.shape[-1] == size:
            seen.append({"x": x.clone(), "a": a, "b": b, "k": k, "shares": options.get("shares")})
        return real(x, refs, a, b, k, borders, prior, generator, **options)

    els.fast_patch_attention = spy  # the engine calls it through the els module
    try:
        list(engine.generate(Request(width=size, height=size, steps=steps, seed=0), threading.Event()))
    finally:
        els.fast_patch_attention = real
    return seen


def edge_pixels(size: int, k: int) -> torch.Tensor:
    """Pixels within k//2 of an edge (the edge bands and corners)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    pad = (k - 1) // 2
    mask[:pad], mask[-pad:], mask[:, :pad], mask[:, -pad:] = True, True, True, True
    return mask


def estimate(
    state: dict, images: torch.Tensor, prior: torch.Tensor, share: float, keys: int, gather: int, seed: int
) -> tuple[torch.Tensor, float]:
    """The fast estimate of one recorded step with these budgets, and its CPU seconds."""
    start = time.process_time()
    est = els.fast_patch_attention(
        state["x"], images, state["a"], state["b"], state["k"], "paper", prior,
        torch.Generator().manual_seed(seed), shares=state["shares"], max_keys=keys,
        max_gather=gather, pixel_weights=False, edge_keys=share,
    )  # fmt: skip
    return est.x0, time.process_time() - start


def compare(engine: PatchEngine, size: int, steps: int) -> list[str]:
    images = engine._fit(engine.references(""), size, size)
    prior = torch.zeros(images.shape[0])
    budget = els.key_budget(size * size, engine.max_keys)
    rows = []
    for state in full_size_steps(engine, size, steps):
        k, edge = state["k"], edge_pixels(size, state["k"])

        reference = [
            estimate(state, images, prior, 1.0, 16 * budget, 1 << 27, 100 + seed)[0] for seed in SEEDS
        ]
        floor = (reference[0] - reference[1]).abs() / 2
        cells = [f"{size}²", f"{state['a']:.2f}", str(k), f"{float(edge.float().mean()):.2f}"]
        for share in SHARES:
            runs = [estimate(state, images, prior, share, budget, 1 << 23, seed) for seed in SEEDS]
            diffs = [(x0 - ref).abs() / 2 for x0, _ in runs for ref in reference]
            on_edge = sum(float(d[:, edge].mean()) for d in diffs) / len(diffs)
            inside = sum(float(d[:, ~edge].mean()) for d in diffs) / len(diffs)
            cells += [f"{on_edge:.4f}", f"{inside:.4f}", f"{min(t for _, t in runs):.2f}"]
        cells += [f"{float(floor[:, edge].mean()):.4f}", f"{float(floor[:, ~edge].mean()):.4f}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = PatchEngine()
    head = ["size", "a_t", "k", "edge px"]
    for share in SHARES:
        head += [f"edge err ×{share:g}", f"inside err ×{share:g}", f"s ×{share:g}"]
    head += ["floor edge", "floor inside"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in (int(s) for s in args.sizes.split(",")):
        table += compare(engine, size, args.steps)
    heading = "Edge rows' keys: error and time per share of the budget"
    publish(heading, f"; each size's full-size steps of a {args.steps}-step run.", table, args.no_append)


if __name__ == "__main__":
    main()
