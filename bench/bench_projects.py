"""How long project saves, loads, journal appends and recovery take; writes bench/PROJECTS.md.

    .venv/bin/python bench/bench_projects.py [FOLDER]

FOLDER (default: a temporary folder) is where the files go: put it on the disk you care about, since the
journal's cost is mostly its fsync. Canvases hold painted-looking layers (smooth gradients with strokes),
not noise, so PNG sizes and times are what a real picture gives.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QCoreApplication

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, provenance  # noqa: E402

from studio.document import Document  # noqa: E402
from studio.files.journal import Journal, find_recovery, recover  # noqa: E402
from studio.files.project import load_project, save_project  # noqa: E402
from studio.gallery import Gallery  # noqa: E402

OUT = Path(__file__).with_name("PROJECTS.md")


def painted(width: int, height: int, seed: int) -> np.ndarray:
    """A layer that looks painted: a smooth gradient with a few hundred opaque strokes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, 4), np.uint8)
    out[..., 0] = (x / width * 255).astype(np.uint8)
    out[..., 1] = (y / height * 255).astype(np.uint8)
    out[..., 2] = ((x + y) / (width + height) * 255).astype(np.uint8)
    out[..., 3] = 255
    for _ in range(300):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), int(rng.integers(4, 40))
        out[max(cy - r, 0) : cy + r, max(cx - r, 0) : cx + r, :3] = rng.integers(0, 255, 3)
    return out


def timed(fn, repeat: int = 3) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    """Run the measurements and write the table."""
    _app = QCoreApplication.instance() or QCoreApplication([])
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="studio-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in (1024, 2048):
        doc = Document(side, side)
        for i in range(4):
            doc.add_layer(f"layer {i}", painted(side, side, i))
        path = folder / f"bench-{side}.studio"
        save = timed(lambda d=doc, p=path: save_project(p, d))
        load = timed(lambda p=path: load_project(p))
        size = path.stat().st_size / 1e6
        rows.append(f"| save, {side}² × 5 layers | {save * 1000:.0f} ms | file {size:.1f} MB |")
        rows.append(f"| load (validate + decode), {side}² × 5 layers | {load * 1000:.0f} ms | |")

    doc, gallery = Document(1024, 1024), Gallery()
    doc.add_layer("ink")
    journal = Journal(doc, gallery, folder / "data")
    journal.start()
    rng = np.random.default_rng(0)
    costs = []
    for _ in range(300):
        patch = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
        start = time.perf_counter()
        doc.paint(doc.active_id, int(rng.integers(0, 960)), int(rng.integers(0, 960)), patch)
        costs.append(time.perf_counter() - start)
    p50, p99 = statistics.median(costs), sorted(costs)[int(len(costs) * 0.99)]
    what = "stroke (64² patch) incl. journal append + fsync"
    rows.append(f"| {what} | p50 {p50 * 1000:.2f} ms | p99 {p99 * 1000:.2f} ms |")
    start = time.perf_counter()
    doc.add_layer("result", painted(1024, 1024, 9))
    took = (time.perf_counter() - start) * 1000
    rows.append(f"| add a 1024² layer incl. journal append + fsync | {took:.0f} ms | |")
    journal.abandon()
    found = find_recovery(folder / "data")
    assert found is not None
    rec = timed(lambda: recover(found), repeat=1)
    rows.append(f"| recover 1024² document after {found.operations} operations | {rec * 1000:.0f} ms | |")
    journal.close()

    text = "# Projects and recovery: measured\n\n"
    text += "`.venv/bin/python bench/bench_projects.py`, one local disk.\n\n"
    text += f"Ran {provenance()}. Machine: {describe()}.\n\n"
    text += "| What | Time | Note |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
