"""The remote engine's cost over a local one on loopback, and a server's throughput with 1 and 2 replicas.

    python bench/bench_remote.py [--size 64] [--steps 30] [--runs 4] [--requests 8]

Frame path: the same patch-engine request runs alternately on a local engine and on a `studio-serve` on
127.0.0.1, each through the window's own path (EngineHost → canvas.set_preview → a synchronous repaint of
a real CanvasView, offscreen). For every painted frame it takes the delay from the moment the engine yielded
the step (the local generator; for the server, the wall-clock time the replica stamped on the event) to the
moment the canvas finished painting it, and the painted frames per second of each run.

Throughput: a server with 1, then 2 engine replicas (one CPU and one torch thread each) gets `--requests`
runs from 4 clients at once; images per minute, and the ratio of the two.

It starts and stops its own servers (see tests/serve_process.py) and leaves no process behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the replicas: one torch thread each
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from machine import describe, provenance  # noqa: E402
from serve_process import ServerProcess  # noqa: E402

from backend.events import Done, StepEvent  # noqa: E402
from backend.patch_engine import PatchEngine  # noqa: E402
from backend.remote import RemoteEngine  # noqa: E402
from backend.request import Request  # noqa: E402


class TimedLocal:
    """The local patch engine, noting the wall-clock time it yields each step."""

    def __init__(self) -> None:
        self.engine = PatchEngine()
        self.yielded: dict[tuple[str, int], float] = {}

    def generate(self, request, cancel):  # noqa: ANN001, ANN201 - the Engine protocol
        for event in self.engine.generate(request, cancel):
            if isinstance(event, StepEvent):
                self.yielded[(event.request_id, event.step)] = time.time()
            yield event


def frame_path(url: str, token: str, size: int, steps: int, runs: int) -> dict[str, dict[str, float]]:
    """Interleaved local and remote runs through EngineHost and a real canvas; delays and frames/s."""
    from PySide6.QtCore import QEventLoop, QObject, QTimer, Slot
    from PySide6.QtWidgets import QApplication

    from studio.document import Document
    from studio.engine_host import EngineHost
    from ui.canvas import CanvasView

    app = QApplication.instance() or QApplication([])
    canvas = CanvasView(Document(size, size))
    canvas.resize(512, 512)
    canvas.show()
    local = TimedLocal()
    remote = RemoteEngine(url, token)
    sent: dict[tuple[str, int], float] = {}
    current = {"id": ""}

    def note(data: dict) -> None:
        if data.get("type") == "step":
            sent[(current["id"], int(data["step"]))] = float(data["t"])

    remote.trace = note
    results: dict[str, dict[str, list[float]]] = {
        "local": {"delay": [], "fps": [], "share": []},
        "remote": {"delay": [], "fps": [], "share": []},
    }

    class Painter(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.painted: dict[tuple[str, int], float] = {}
            self.loop: QEventLoop | None = None

        @Slot(object)
        def step(self, ev: StepEvent) -> None:
            canvas.set_preview(ev.preview)
            canvas.repaint()  # paint now: the delay ends when the pixels are on the canvas
            self.painted[(ev.request_id, ev.step)] = time.time()

        @Slot(object)
        def done(self, _done: Done) -> None:
            if self.loop is not None:
                self.loop.quit()

    painter = Painter()
    for name, engine in (("local", local), ("remote", remote)):
        host = EngineHost(engine, name=f"bench-{name}")
        host.step.connect(painter.step)
        host.done.connect(painter.done)
        host.failed.connect(lambda _r, message: print("failed:", message, file=sys.stderr))
        results[name]["host"] = host  # type: ignore[assignment]
    base = Request(engine="patch", prompt="brick", seed=1, steps=steps, width=size, height=size)
    for k in range(runs + 1):  # the first round warms both up (references, the replica's engine)
        for name, yielded in (("local", local.yielded), ("remote", sent)):
            request = base.replace(seed=k)
            current["id"] = request.request_id
            painter.loop = QEventLoop()
            QTimer.singleShot(600_000, painter.loop.quit)
            start = time.perf_counter()
            results[name]["host"].submit(request)  # type: ignore[union-attr]
            painter.loop.exec()
            wall = time.perf_counter() - start
            frames = [(s, t) for (rid, s), t in painter.painted.items() if rid == request.request_id]
            if k == 0:
                continue
            delays = [
                t - yielded[(request.request_id, s)] for s, t in frames if (request.request_id, s) in yielded
            ]
            results[name]["delay"].extend(delays)
            results[name]["fps"].append(len(frames) / wall)
            results[name]["share"].append(len(frames) / steps)
    for name in results:
        results[name].pop("host").shutdown()  # type: ignore[union-attr]
    canvas.close()
    app.processEvents()
    return {name: _summary(r) for name, r in results.items()}


def _summary(r: dict[str, list[float]]) -> dict[str, float]:
    delays = sorted(r["delay"])
    return {
        "fps": statistics.median(r["fps"]),
        "painted": statistics.median(r["share"]),
        "median_ms": 1000 * statistics.median(delays),
        "p90_ms": 1000 * delays[int(0.9 * (len(delays) - 1))],
        "max_ms": 1000 * delays[-1],
        "frames": len(delays),
    }


def throughput(replicas: int, requests: int, size: int, steps: int, log: Path) -> float:
    """Images per minute from 4 clients at once on a server with `replicas` engine replicas."""
    server = ServerProcess(["--replicas", str(replicas), "--cpus-per-replica", "1"], log)
    try:
        url = server.wait_ready()
        base = Request(engine="patch", prompt="brick", seed=1, steps=steps, width=size, height=size)

        def client(count: int, seed: int) -> None:
            engine = RemoteEngine(url, server.token or "")
            for n in range(count):
                for _ in engine.generate(base.replace(seed=seed * 100 + n), threading.Event()):
                    pass

        warm = [threading.Thread(target=client, args=(1, 90 + n)) for n in range(replicas)]
        for t in warm:  # every replica loads its engine before the clock starts
            t.start()
        for t in warm:
            t.join()
        clients = [threading.Thread(target=client, args=(requests // 4, n)) for n in range(4)]
        start = time.perf_counter()
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        return 60.0 * (requests // 4 * 4) / (time.perf_counter() - start)
    finally:
        server.stop(signal.SIGTERM)
        left = server.leftovers()
        server.close()
        if left:
            print(f"processes left behind: {left}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--throughput-size", type=int, default=96)
    parser.add_argument("--throughput-steps", type=int, default=10)
    args = parser.parse_args()
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"Machine: {describe()}; {provenance()}.")
    print(f"`python bench/bench_remote.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    server = ServerProcess([], logs / "bench-remote-serve.log")
    try:
        url = server.wait_ready()
        paths = frame_path(url, server.token or "", args.size, args.steps, args.runs)
    finally:
        server.stop(signal.SIGTERM)
        server.close()
    print(
        f"\nFrame path: patch engine, {args.size}², {args.steps} steps, {args.runs} runs each, interleaved\n"
    )
    print("| path   | painted frames/s | frames painted | yield → painted: median |    p90 |    max |")
    print("|--------|------------------|----------------|-------------------------|--------|--------|")
    for name, s in paths.items():
        print(
            f"| {name:<6} | {s['fps']:16.1f} | {s['painted']:13.0%} | {s['median_ms']:20.1f} ms "
            f"| {s['p90_ms']:4.1f} ms | {s['max_ms']:4.1f} ms |"
        )
    ratio = paths["remote"]["fps"] / paths["local"]["fps"]
    extra = paths["remote"]["median_ms"] - paths["local"]["median_ms"]
    print(f"\nremote / local frames per second: {ratio:.2f}; remote adds {extra:.1f} ms a frame (median)")

    rates = {
        n: throughput(n, args.requests, args.throughput_size, args.throughput_steps, logs / f"bench-r{n}.log")
        for n in (1, 2)
    }
    size, steps = args.throughput_size, args.throughput_steps
    print(f"\nThroughput: {args.requests} runs of {size}², {steps} steps from 4 clients\n")
    print("| engine replicas | images per minute |")
    print("|-----------------|-------------------|")
    for n, rate in rates.items():
        print(f"| {n:15d} | {rate:17.1f} |")
    print(f"\n2 replicas / 1 replica: {rates[2] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
