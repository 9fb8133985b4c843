"""Benchmark the diffusers engine: time per step, preview overhead, engine vs a plain pipeline call, and a
ControlNet step and a LoRA step against the plain step (bench/engine_adapters.py), and a grid of seeds batched
through the UNet against sequential runs (bench/engine_grid.py).

    .venv/bin/python bench/bench_engine.py            # CPU, tiny random-weight SD1.x model, 64×64
    .venv/bin/python bench/bench_engine.py --gpu      # CUDA, SD1.5-sized random weights, fp16, 512×512

Each configuration runs `--repeats` times, interleaved so that load from other processes hits all of them
alike; the table shows medians. Results are appended to bench/RESULTS.md under "## Diffusers engine".
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine_adapters import adapter_rows  # noqa: E402
from engine_grid import grid_rows  # noqa: E402
from machine import describe  # noqa: E402

from backend.diffusers_engine import DiffusersEngine  # noqa: E402
from backend.events import Done  # noqa: E402
from backend.request import Request  # noqa: E402
from backend.schedulers import make_scheduler  # noqa: E402


def sd15_random(device: torch.device, dtype: torch.dtype, family: str = "sd15"):
    """An SD1.5-sized (or `family`: sd21) pipeline with random weights, built on the device from the shipped
    offline configs."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    configs = ROOT / "assets" / "configs" / family
    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(configs / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(configs / "vae")))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(configs / "text_encoder")))
    from diffusers import PNDMScheduler

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(str(configs / "tokenizer")),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(str(configs / "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device, dtype)


def sync(device: torch.device) -> None:
    """Wait for the GPU so wall-clock times cover its work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_engine(engine: DiffusersEngine, request: Request) -> tuple[float, float]:
    """(seconds for the whole run, seconds per step from the step events)."""
    sync(engine.device)
    start = time.perf_counter()
    stamps = []
    for event in engine.generate(request, threading.Event()):
        if isinstance(event, Done):
            break
        stamps.append(event.elapsed_s)
    sync(engine.device)
    total = time.perf_counter() - start
    per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return total, per_step


def time_pipeline(pipe, request: Request) -> float:
    """Seconds for diffusers' own pipeline call with the same settings."""
    pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
    sync(pipe.device)
    start = time.perf_counter()
    pipe(
        request.prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        height=request.height,
        width=request.width,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    )
    sync(pipe.device)
    return time.perf_counter() - start


def frame_cost(engine: DiffusersEngine, size: int, taesd: bool, repeats: int = 30) -> float:
    """Seconds to make one preview frame from x0 (latent-RGB, or TAESD with random weights)."""
    from diffusers import AutoencoderTiny

    from backend.previews import Previewer

    model = None
    if taesd:
        with torch.device(engine.device):
            model = AutoencoderTiny().to(engine.dtype)
    previewer = Previewer("sd1", size, size, engine.device, model)
    x0 = torch.randn(1, 4, size // 8, size // 8, device=engine.device, dtype=engine.dtype)
    for _ in range(3):
        previewer.push(x0)
    previewer.finish()
    sync(engine.device)
    start = time.perf_counter()
    for _ in range(repeats):
        previewer.push(x0)
        previewer.latest()
    previewer.finish()
    sync(engine.device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    """Run the benchmark, print the table, and record it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD1.5-sized random weights on CUDA at 512²")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--no-adapters", action="store_true", help="skip the ControlNet and LoRA rows")
    parser.add_argument("--no-grid", action="store_true", help="skip the grid batching rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU; this torch build sees none")
        device, dtype, size, steps = torch.device("cuda"), torch.float16, 512, args.steps or 20
        pipe = sd15_random(device, dtype)
        label = f"SD1.5-sized random weights, fp16, {size}², {steps} steps, CUDA"
    else:
        from tiny_models import build_tiny_sd

        device, dtype, size, steps = torch.device("cpu"), torch.float32, 64, args.steps or 20
        pipe = build_tiny_sd()
        label = f"tiny random-weight SD1.x, fp32, {size}², {steps} steps, CPU"
    pipe.set_progress_bar_config(disable=True)
    engine = DiffusersEngine(device=device.type, dtype="fp16" if dtype == torch.float16 else "fp32")
    engine.use_pipeline(pipe, "bench")
    base = Request(
        engine="diffusers",
        model="bench",
        prompt="a lighthouse",
        seed=1,
        steps=steps,
        guidance=7.5,
        width=size,
        height=size,
        scheduler="euler",
    )
    with_previews, without = base.replace(preview="latent_rgb"), base.replace(preview="none")
    time_engine(engine, with_previews)  # warm-up: allocator, kernels, lazy imports
    time_pipeline(pipe, base)
    runs: dict[str, list[float]] = {"previews": [], "none": [], "pipeline": [], "step": [], "step_none": []}
    for _ in range(args.repeats):
        total, step = time_engine(engine, with_previews)
        runs["previews"].append(total)
        runs["step"].append(step)
        total, step = time_engine(engine, without)
        runs["none"].append(total)
        runs["step_none"].append(step)
        runs["pipeline"].append(time_pipeline(pipe, base))
    med = {k: statistics.median(v) for k, v in runs.items()}
    latent_rgb, taesd = frame_cost(engine, size, taesd=False), frame_cost(engine, size, taesd=True)
    rows = [
        ("time per step, engine with latent-RGB previews", f"{med['step'] * 1000:.2f} ms"),
        ("time per step, engine without previews", f"{med['step_none'] * 1000:.2f} ms"),
        ("whole run, engine with previews", f"{med['previews'] * 1000:.1f} ms"),
        ("whole run, engine without previews", f"{med['none'] * 1000:.1f} ms"),
        ("whole run, diffusers pipeline call", f"{med['pipeline'] * 1000:.1f} ms"),
        ("one latent-RGB preview frame (direct)", f"{latent_rgb * 1000:.3f} ms"),
        ("latent-RGB frame / step without previews", f"{latent_rgb / med['step_none'] * 100:.2f} %"),
        ("one TAESD preview frame (random weights)", f"{taesd * 1000:.3f} ms"),
        ("preview overhead (with / without previews)", f"{med['previews'] / med['none']:.3f}"),
        ("engine without previews / pipeline", f"{med['none'] / med['pipeline']:.3f}"),
    ]
    if not args.no_adapters:
        rows += adapter_rows(engine, pipe, base, args.repeats)
    if not args.no_grid:
        rows += grid_rows(engine, base, args.repeats)
    width = max(len(r[0]) for r in rows)
    table = "\n".join(f"| {name:<{width}} | {value:>10} |" for name, value in rows)
    header = f"| {'measure':<{width}} | {'median':>10} |\n|{'-' * (width + 2)}|{'-' * 12}|"
    print(label)
    print(header + "\n" + table)
    if not args.no_record:
        record(label, header + "\n" + table, args.repeats)


def record(label: str, table: str, repeats: int) -> None:
    """Append a result under the "## Diffusers engine" heading of bench/RESULTS.md."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if "## Diffusers engine" not in text:
        text = text.rstrip("\n") + "\n\n## Diffusers engine\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    entry = (
        f"\n### {label} ({stamp})\nMachine: {describe(device)}. Medians of {repeats} interleaved runs; "
        f"`python bench/bench_engine.py {' '.join(sys.argv[1:])}`.\n\n{table}\n"
    )
    # Insert at the end of the diffusers section so other engines' sections stay where they are.
    start = text.index("## Diffusers engine")
    nxt = text.find("\n## ", start + 1)
    text = text + entry if nxt < 0 else text[:nxt] + "\n" + entry.rstrip("\n") + "\n" + text[nxt:]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
