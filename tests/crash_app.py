"""A headless studio process for the crash tests, killed with SIGKILL by `tests/test_crash_safety.py`.

    python tests/crash_app.py save-loop PROJECT      save two large states over PROJECT, alternately, forever
    python tests/crash_app.py work DATA_DIR SEED     a scripted session (strokes, layer ops, results, undo)
                                                     journalled into DATA_DIR; prints "done N" after each
    python tests/crash_app.py generate DATA_DIR OUT  a Session: strokes, layer ops and a generation (the
                                                     scriptable engine), then saves the state to OUT, "ready"
    python tests/crash_app.py export-zygote SIDE     builds two SIDE² documents, says "ready"; then for
                                                     each line "png PATH" or "ora PATH" forks a child that
                                                     exports the two in turn to PATH until killed (its pid)

Each mode then waits to be killed. The operations are a pure function of the seed (ids included, via
`deterministic_ids`) so the test can rebuild the state after any number of them in its own process.
"""

from __future__ import annotations

import random
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

import studio.layers
from backend.request import Request
from studio.document import Document
from studio.gallery import Gallery, Result


class _SeededUuid:
    """Stands in for the `uuid` module inside studio.layers (`new_id`) so new ids follow a seed."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)


def deterministic_ids(seed: int) -> None:
    """Make layer and result ids a function of the seed (this process only)."""
    studio.layers.uuid = _SeededUuid(seed)  # type: ignore[assignment]


def big_state(width: int, height: int, seed: int) -> Document:
    """A document with a few full-size layers of noisy strokes: slow enough to save that kills land inside."""
    deterministic_ids(seed)
    rng = np.random.default_rng(seed)
    doc = Document(width, height)
    for i in range(3):
        base = rng.integers(0, 255, (height // 8, width // 8, 4), dtype=np.uint8)
        pixels = np.kron(
            base, np.ones((8, 8, 1), np.uint8)
        )  # blocky, so PNG work is realistic, not worst case
        pixels[::3] = rng.integers(0, 255, pixels[::3].shape, dtype=np.uint8)
        doc.add_layer(f"layer {i} of state {seed}", pixels)
    return doc


def scripted_ops(
    doc: Document, gallery: Gallery, history: list[str], seed: int
) -> list[Callable[[], object]]:
    """A fixed list of operations (strokes, mask, layer ops, results, undo/redo, history), seeded."""
    rng = np.random.default_rng(seed)
    w, h = doc.width, doc.height

    def stroke() -> None:
        size = int(rng.integers(4, 24))
        patch = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
        doc.paint(
            doc.active_id or doc.layers[-1].id, int(rng.integers(-8, w)), int(rng.integers(-8, h)), patch
        )

    def mask() -> None:
        doc.paint_mask(int(rng.integers(0, w)), int(rng.integers(0, h)), np.full((9, 13), 255, np.uint8))

    def result() -> None:
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        parents = (gallery.results[-1].id,) if gallery.results else ()
        prompt = f"a recorded result {len(gallery.results)} ✓"
        request = Request(prompt=prompt, seed=len(gallery.results))
        created = 1_700_000_000.0 + len(gallery.results)
        r = Result(image, request, {"engine": "patch"}, parents, True, created=created)
        doc.add_layer(prompt, image, source=r.id)
        gallery.add(r)
        history.insert(0, prompt)

    def props() -> None:
        layer = doc.layers[int(rng.integers(0, len(doc.layers)))]
        doc.set_layer(layer.id, opacity=round(float(rng.random()), 3), visible=bool(rng.random() > 0.3))

    def move() -> None:
        doc.move_layer(doc.layers[-1].id, int(rng.integers(0, len(doc.layers))))

    plan: list[Callable[[], object]] = [stroke, lambda: doc.add_layer("ink"), stroke, stroke, mask, result]
    plan += [stroke, props, lambda: doc.duplicate_layer(doc.layers[1].id), move, doc.undo, doc.undo]
    plan += [doc.redo, stroke, lambda: doc.delete_layer(doc.layers[-1].id), result, mask, stroke, doc.undo]
    plan += [lambda: doc.set_layer(doc.layers[0].id, name="ground ✎"), stroke, props, result, stroke]
    return plan


def _wait_forever() -> None:
    print("ready", flush=True)
    threading.Event().wait()


def save_loop(path: Path) -> None:
    """Save state A (unless the file exists), then B, A, B... over the same file until killed."""
    from studio.files.project import save_project

    states = [big_state(640, 640, 1), big_state(640, 640, 2)]
    if not path.exists():  # later runs start saving at once, so more of each run is a kill window
        save_project(path, states[0])
    print("ready", flush=True)
    for i in range(1, 1_000_000):
        save_project(path, states[i % 2])
        print(f"saved {i % 2}", flush=True)


def work(data_dir: Path, seed: int) -> None:
    """Journal a scripted session, acknowledging each finished operation."""
    from PySide6.QtCore import QCoreApplication

    from studio.files.journal import Journal

    _app = QCoreApplication.instance() or QCoreApplication([])
    deterministic_ids(seed)
    doc, gallery, history = Document(96, 64), Gallery(), []
    journal = Journal(doc, gallery, data_dir, history=lambda: history)
    journal.start()
    for i, op in enumerate(scripted_ops(doc, gallery, history, seed), start=1):
        op()
        journal.record_history()
        print(f"done {i}", flush=True)
        if i == 12:
            journal.compact()  # a snapshot in the middle, as the timer would take one
    _wait_forever()


def generate(data_dir: Path, out: Path) -> None:
    """A real Session: strokes, layer ops, a generation on its engine thread, journalled; await the kill."""
    from PySide6.QtCore import QCoreApplication

    from studio.files.journal import Journal
    from studio.files.project import save_project
    from studio.session import Session

    app = QCoreApplication.instance() or QCoreApplication([])
    # The scriptable engine stands in for a recorded result: the engine is not what this test is about,
    # and it keeps torch out of the child so each kill costs a fraction of a second.
    from fake_engine import FakeEngine

    session = Session(FakeEngine(), document=Document(32, 32))
    doc, gallery = session.document, session.gallery
    journal = Journal(doc, gallery, data_dir, history=lambda: session.model.prompt_history)
    session.model.history_changed.connect(journal.record_history)
    journal.start()
    ops = scripted_ops(doc, gallery, [], seed=5)
    for op in ops[:5]:
        op()
    session.model.set(prompt="a small test", seed=11, steps=2)
    session.runs.result_added.connect(app.quit)  # the result is a layer, a gallery entry and a history line
    session.runs.run_ended.connect(app.quit)
    if session.runs.generate() is None:
        raise SystemExit("the generation was refused")
    app.exec()
    if not any(layer.source for layer in doc.layers):
        raise SystemExit("the generation ended without a result")
    for op in ops[6:11]:
        op()
    save_project(out, doc, gallery, session.model.prompt_history)
    _wait_forever()


def export_states(side: int) -> list[Document]:
    """The two documents the export loop writes in turn (blocky noise: realistic PNG work)."""
    return [big_state(side, side, seed) for seed in (1, 2)]


def export_request() -> Request:
    """The recipe every exported PNG carries."""
    return Request(prompt="an exported painting", seed=3, width=64, height=64)


def export_zygote(side: int) -> None:
    """Fork one export loop per request, so each of many kills costs a fork, not a Python start-up.

    Says "ready SECONDS" first: how long one ORA export takes here, so the test can aim its kills.
    """
    import os
    import signal
    import tempfile
    import time

    from studio.files.ora import export_ora
    from studio.files.pngmeta import save_png

    states = export_states(side)
    pictures = [doc.composite() for doc in states]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_ora(Path(folder) / "probe.ora", states[0])
        took = time.perf_counter() - start
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are killed, never waited for: no zombies
    print(f"ready {took:.4f}", flush=True)
    for line in sys.stdin:
        kind, target = line.split(" ", 1)
        path = Path(target.strip())
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            continue
        try:  # the child: write the two states in turn until killed
            for i in range(1_000_000):
                if kind == "png":
                    save_png(path, pictures[i % 2], export_request())
                else:
                    export_ora(path, states[i % 2])
        finally:
            os._exit(1)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "save-loop":
        save_loop(Path(args[0]))
    elif mode == "work":
        work(Path(args[0]), int(args[1]))
    elif mode == "generate":
        generate(Path(args[0]), Path(args[1]))
    elif mode == "export-zygote":
        export_zygote(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
