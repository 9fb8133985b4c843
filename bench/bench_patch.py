"""Benchmark the patch engine: fast-path run time, its error against the exact path, the exact path's time.

    python bench/bench_patch.py --threads 1            # CPU: 128², 20 steps, the 32 shipped references
    python bench/bench_patch.py --device cuda          # GPU (fp16)

1. Whole runs of the engine (fast path), median of --repeats.
2. Along one fast run's trajectory, at every step, the fast estimate against the exact path's estimate of
   the same noisy image on --rows sampled rows (the exact path on a whole 128² image takes hours on a CPU),
   with the exact path's time per step extrapolated from those rows to the whole image.
3. Whole runs at --small size, where the exact path is affordable: both paths' times and how far apart the
   final images land (trajectories diverge, so this is a looser measure than 2).
Prints a table and appends it, with the machine, to bench/RESULTS.md under "## Patch engine".

    python bench/bench_patch.py --targets          # issue 11's speed targets, each size in its own process

`--targets` instead measures, one torch thread, each run in a fresh child process (so its peak memory is
its own): the default first image (256², 12 steps) in CPU seconds, 512² in CPU seconds and peak memory
(the process's maximum resident set: torch and the references included), their ratio, and at 128² (Live)
the step events per second a preview is drawn from, and the first one's delay.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe, provenance  # noqa: E402

from backend import els  # noqa: E402
from backend.patch_engine import PatchEngine, initial_noise  # noqa: E402
from backend.request import Request  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Patch engine"
INTRO = """How to read these: `bench/bench_patch.py` times whole runs of the patch engine's fast path (the
default: a random key subset, half spread evenly and half split by each reference's share of the image,
with importance weights; patches reduced to their f×f lowest cosine frequencies of luminance and about
(f/3)² of each opponent-colour axis, f about half the patch side from 8 to 32, distances wholly in those
dims, projected on the sampled keys' principal axes; edge rows with half the key budget), then follows
one fast run and at every step compares its clean-image estimate with the exact path's
estimate of the same noisy image on sampled rows (errors on a 0–1 scale, like an image's pixel values),
extrapolating the exact path's time from those rows. The exact path on a whole 128² image with 32
references is hours of CPU, so its whole-run time is an extrapolation; whole runs of both paths are
compared at 32². The CPU is a 2-core machine shared with other work: the CPU-time row is the steadier
number (with one thread it is what the run takes alone). One torch thread: with two threads on a busy
2-core machine OpenMP's spinning workers make runs several times slower.

**GPU (`--device cuda`): not measured yet**, no GPU was lent to this session. On CUDA the engine keeps
references on the device and does the query·key products in fp16 on centred patches (fp32 at the lowest
noise levels, where 1/b² would magnify fp16 rounding past a logit); bf16 is never used.

"""


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def whole_run(engine: PatchEngine, request: Request, device: str) -> tuple[float, object]:
    """Seconds for one complete generate() and its Done."""
    sync(device)
    start = time.perf_counter()
    done = list(engine.generate(request, threading.Event()))[-1]
    sync(device)
    return time.perf_counter() - start, done


def trajectory_errors(engine: PatchEngine, request: Request, rows: int, device: str) -> list[dict]:
    """Per step: fast vs exact estimate (0–1 scale) on sampled rows, and the exact time extrapolated."""
    refs = engine.references(request.model)
    images = engine._fit(refs, request.width, request.height)
    n, _, h, w = images.shape
    prior = torch.zeros(n, device=images.device)
    x = initial_noise(request.seed, (3, h, w)).to(images.device)
    gen = torch.Generator().manual_seed(request.seed)
    times = els.timesteps(request.steps)
    shares = None
    out = []
    for step, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True), start=1):
        a, b = els.alpha_sigma(t)
        k = els.patch_size(t, request.locality, min(h, w))
        fast = els.fast_patch_attention(
            x, images, a, b, k, "paper", prior, gen, shares=shares, max_keys=engine.max_keys,
            low_precision=engine.low_precision,
        )  # fmt: skip
        y0 = (step * 37) % (h - rows + 1)  # a different band each step
        sync(device)
        start = time.perf_counter()
        exact = els.patch_attention(
            x, images, a, b, k, "paper", prior, rows=(y0, y0 + rows), low_precision=engine.low_precision
        )
        sync(device)
        exact_s = (time.perf_counter() - start) * h / rows
        diff = (fast.x0[:, y0 : y0 + rows] - exact.x0).abs() / 2
        out.append(
            {
                "step": step,
                "t": t,
                "k": k,
                "mean": float(diff.mean()),
                "max": float(diff.max()),
                "exact_s": exact_s,
            }
        )
        shares = fast.ref_weights.mean((1, 2))
        x = els.ddim_step(x, fast.x0, t, t_next)
    return out


def child_run(size: int, steps: int) -> dict:
    """In this process: one warm-up run at `size` (loads and fits the references), then one timed run."""
    torch.set_num_threads(1)
    engine = PatchEngine()
    list(engine.generate(Request(width=size, height=size, steps=1, seed=1), threading.Event()))
    cpu, wall = time.process_time(), time.perf_counter()
    stamps = []
    for _ in engine.generate(Request(width=size, height=size, steps=steps, seed=0), threading.Event()):
        stamps.append(time.perf_counter() - wall)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"cpu": time.process_time() - cpu, "wall": stamps[-1], "steps": stamps[:-1], "peak": peak}


def in_child(size: int, steps: int) -> dict:
    """child_run in a fresh interpreter, so the peak memory is that run's alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{size},{steps}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def targets(no_append: bool) -> None:
    """Issue 11's speed targets: 256² CPU time, 512² memory and time ratio, Live preview rate at 128²."""
    runs = {size: in_child(size, 12) for size in (128, 256, 512)}
    live = runs[128]["steps"]
    fps = (len(live) - 1) / (live[-1] - live[0])
    rows = [
        ("256², 12 steps: CPU time, one thread (target ≤ 4.5 s)", f"{runs[256]['cpu']:.2f} s"),
        ("512², 12 steps: CPU time, one thread", f"{runs[512]['cpu']:.2f} s"),
        ("512² / 256² CPU time (target ≤ 2.5)", f"{runs[512]['cpu'] / runs[256]['cpu']:.2f}"),
        ("512²: peak resident memory of the process (target ≤ 1 GB)", f"{runs[512]['peak'] / 1e9:.2f} GB"),
        ("256²: peak resident memory of the process", f"{runs[256]['peak'] / 1e9:.2f} GB"),
        ("128², 12 steps: step events per second (target ≥ 2)", f"{fps:.1f}"),
        ("128²: first step event after the run starts", f"{live[0]:.2f} s"),
        ("128², 12 steps: CPU time", f"{runs[128]['cpu']:.2f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    table = [f"| {'measure':<{width}} | {'value':>9} |", f"|{'-' * (width + 2)}|{'-' * 11}|"]
    table += [f"| {name:<{width}} | {value:>9} |" for name, value in rows]
    publish("Speed targets (issue 11), CPU, 12 steps", "", table, no_append)


def main() -> None:
    """Run the three measurements, print the table and append it to bench/RESULTS.md."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        size, steps = (int(v) for v in sys.argv[2].split(","))
        print(json.dumps(child_run(size, steps)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1, help="rows the exact path is sampled on per step")
    parser.add_argument("--small", type=int, default=32, help="size of the exact whole-run comparison")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--targets", action="store_true", help="issue 11's speed and memory targets only")
    args = parser.parse_args()
    if args.targets:
        targets(args.no_append)
        return
    torch.set_num_threads(args.threads)
    engine = PatchEngine(device=args.device)
    n_refs = len(engine.references("").references)
    request = Request(width=args.size, height=args.size, steps=args.steps, seed=0)

    # 1. Whole fast runs (the first also loads and fits the references; the cache makes the rest real runs).
    whole_run(engine, request.replace(steps=1), args.device)
    cpu_start = time.process_time()
    fast_times = [whole_run(engine, request.replace(seed=i), args.device)[0] for i in range(args.repeats)]
    # CPU seconds are steadier than wall time on a shared machine (with one thread they are the wall time
    # the run would take alone).
    fast_cpu = (time.process_time() - cpu_start) / args.repeats
    fast_s = statistics.median(fast_times)

    # 2. Fast vs exact estimates along a trajectory.
    errors = trajectory_errors(engine, request, args.rows, args.device)
    exact_total = sum(e["exact_s"] for e in errors)
    mean_err = statistics.mean(e["mean"] for e in errors)
    worst = max(errors, key=lambda e: e["mean"])

    # 3. Whole runs at a small size, both paths.
    small = request.replace(width=args.small, height=args.small)
    small_fast_s, small_fast = whole_run(engine, small, args.device)
    small_exact_s, small_exact = whole_run(engine, small.replace(exact=True), args.device)
    final_mad = float(abs(small_fast.image.astype(float) - small_exact.image.astype(float)).mean() / 255)

    size, small_size = f"{args.size}²", f"{args.small}²"
    rows = [
        (f"fast path, whole run {size}, {args.steps} steps, {n_refs} refs", f"{fast_s:.2f} s"),
        ("  same, CPU time of this process", f"{fast_cpu:.2f} s"),
        ("fast path, per step", f"{fast_s / args.steps * 1000:.0f} ms"),
        (f"exact path, whole run {size} (from {args.rows} row(s) per step)", f"{exact_total:.0f} s"),
        ("fast vs exact estimate, mean abs error (0–1 scale)", f"{mean_err:.4f}"),
        (
            f"  worst step t={worst['t']:.2f}, k={worst['k']}: mean / max",
            f"{worst['mean']:.4f} / {worst['max']:.3f}",
        ),
        (f"fast path, whole run {small_size}", f"{small_fast_s:.2f} s"),
        (f"exact path, whole run {small_size}", f"{small_exact_s:.2f} s"),
        (f"final images {small_size}, fast vs exact, mean abs diff", f"{final_mad:.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    table = [f"| {'measure':<{width}} | {'value':>15} |", f"|{'-' * (width + 2)}|{'-' * 17}|"]
    table += [f"| {name:<{width}} | {value:>15} |" for name, value in rows]
    per_step = ["| step | t | k | mean err | max err | exact s (extrapolated) |", "|---|---|---|---|---|---|"]
    per_step += [
        f"| {e['step']} | {e['t']:.2f} | {e['k'] or 'whole'} | {e['mean']:.4f} | {e['max']:.3f} "
        f"| {e['exact_s']:.1f} |"
        for e in errors
    ]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"### {args.device.upper()}, {args.size}², {args.steps} steps, {n_refs} references ({stamp})"
    command = " ".join(["python bench/bench_patch.py", *sys.argv[1:]])
    text = "\n".join(
        [title, f"Machine: {describe(args.device)}. `{command}`", "", *table, ""]
        + ["<details><summary>per step</summary>", "", *per_step, "", "</details>", ""]
    )
    print(text)
    if not args.no_append:
        append(text)


def publish(heading: str, note: str, body: list[str], no_append: bool) -> None:
    """Print a result block (the heading with when and on which commit, the machine and the command that
    made it followed by `note`, then `body`) and add it to the section unless `no_append`."""
    command = " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    text = "\n".join(
        [f"### {heading} ({provenance()})", f"Machine: {describe()}. `{command}`{note}", "", *body, ""]
    )
    print(text)
    if not no_append:
        append(text)


def append(text: str) -> None:
    """Add the text at the end of the patch engine's section of RESULTS.md, creating the section if needed."""
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if SECTION not in current:
        current = current.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}"
    head, _, rest = current.partition(SECTION)
    body, sep, tail = rest.partition("\n## ")
    new = head + SECTION + body.rstrip("\n") + "\n\n" + text + ("\n" + sep.lstrip("\n") + tail if sep else "")
    RESULTS.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
