"""The window's first image, as a new user meets it: `studio --demo` timed end to end.

    .venv/bin/python bench/bench_demo.py              # 128² and 256², torch threads as studio sets them
                                                      # and two, 2 runs each; writes bench/DEMO.md
    .venv/bin/python bench/bench_demo.py --runs 3 --sizes 256 --threads 1

Each run is a fresh process: the real window (offscreen), the patch engine at the fresh-install defaults
(12 steps) with the demo prompt and seed, then a screenshot. The demo prints `frames=N steps=S
max_stall_ms=M`: N previews painted of S steps, and the longest the GUI event loop went without running a
5 ms timer while the run went on. Wall time includes start-up (imports, the window, the engine import).
Runs of one configuration alternate with the others, so a change in the machine's load spreads over all.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).with_name("DEMO.md")
LINE = re.compile(r"frames=(\d+) steps=(\d+) max_stall_ms=(\d+)")


def run_demo(size: int, threads: int | None) -> dict:
    """One `studio --demo` in a fresh process: its line, its wall time and the load when it started."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ui.app", "--demo", f"{tmp}/demo.png", "--size", str(size)]
        cmd += ["--settings", f"{tmp}/s.ini"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - start
    match = LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"the demo failed ({proc.returncode}): {proc.stdout}{proc.stderr[-2000:]}")
    frames, steps, stall = (int(g) for g in match.groups())
    return {"frames": frames, "steps": steps, "stall": stall, "wall": wall, "load": load}


def main() -> None:
    """Run every configuration `--runs` times, interleaved; print the table and write bench/DEMO.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    default_threads = max(1, (os.cpu_count() or 2) - 1)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({default_threads, 2}),
        help=f"torch threads (studio's own choice here: {default_threads})",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    configs = [(size, threads) for size in args.sizes for threads in args.threads]
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for n in range(args.runs):
        for size, threads in configs:
            r = run_demo(size, threads)
            results[(size, threads)].append(r)
            print(f"run {n + 1}: {size}² threads {threads}: {r}", file=sys.stderr, flush=True)
    rows = [
        "| canvas | torch threads | runs | frames / steps | max GUI stall (ms) | wall incl. start-up (s) |"
        " load avg at start |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for (size, threads), rs in results.items():
        frames = ", ".join(f"{r['frames']}/{r['steps']}" for r in rs)
        stalls = ", ".join(str(r["stall"]) for r in rs)
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        loads = ", ".join(f"{r['load']:.1f}" for r in rs)
        median = statistics.median(r["wall"] for r in rs)
        walls += f" (median {median:.1f})"
        rows.append(f"| {size}² | {threads} | {len(rs)} | {frames} | {stalls} | {walls} | {loads} |")
    command = " ".join([".venv/bin/python bench/bench_demo.py", *sys.argv[1:]])
    text = "\n".join(
        [
            "# The window's first image (`studio --demo`)",
            "",
            f"{provenance()}. Machine: {describe()}.",
            f"Command: `{command}`",
            "",
            *rows,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
