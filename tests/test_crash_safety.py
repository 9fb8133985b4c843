"""Crash safety: SIGKILL during saves and during work never loses a finished operation.

The killed processes run `tests/crash_app.py`. Its operations are seeded (ids too), so this process can
rebuild the state after every journal record and check that a recovered document equals one of them.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import crash_app
import faults
import numpy as np
import pytest

import studio.commands
import studio.layers
from backend.errors import StudioError
from backend.images import load_picture
from studio.document import Document
from studio.files.journal import Journal, find_recovery, journal_path, recover, snapshot_path
from studio.files.project import ProjectData, ProjectError, load_project, project_data, save_project
from studio.gallery import Gallery

APP = Path(__file__).with_name("crash_app.py")


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


@pytest.fixture(autouse=True)
def _restore_ids(monkeypatch):
    # crash_app.deterministic_ids swaps the uuid module inside studio.layers; put it back afterwards.
    monkeypatch.setattr(studio.layers, "uuid", studio.layers.uuid)


def digest(data: ProjectData) -> str:
    """One hash over everything a person would miss: layers, pixels, mask, gallery, history."""
    h = hashlib.sha256()
    h.update(repr((data.width, data.height, data.active_id, data.prompt_history)).encode())
    for la in data.layers:
        h.update(repr((la.id, la.name, round(la.opacity, 6), la.visible, la.source, la.painted)).encode())
        h.update(np.ascontiguousarray(la.pixels).tobytes())
    h.update(data.mask.tobytes())
    for r in data.results:
        h.update(repr((r.id, r.parents, r.painted, r.created, r.request, sorted(r.extras))).encode())
        h.update(np.ascontiguousarray(r.image).tobytes())
    return h.hexdigest()


def work_of(data: ProjectData) -> dict[str, bytes]:
    """A project's layers, mask, gallery and history as named bytes, for faults.bytes_lost."""
    return faults.snapshot(data, data, history="\n".join(data.prompt_history))


def lost_against(got: ProjectData | None, candidates: list[ProjectData]) -> int:
    """Bytes of work lost when `got` is what survived and any of `candidates` would have been right.

    None (a file that no longer opens) loses the whole of the first candidate.
    """
    if got is None:
        return faults.bytes_lost(work_of(candidates[0]), {})
    mine = work_of(got)
    return min(faults.bytes_lost(work_of(want), mine) for want in candidates)


class Child:
    """A crash_app process whose stdout lines are read with a deadline (never a hang)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        self._buf = b""

    def line(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                self.kill()
                raise AssertionError("crash_app said nothing in time")
            chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                err = self.proc.stderr.read().decode()  # type: ignore[union-attr]
                raise AssertionError(f"crash_app ended early: {err[-2000:]}")
            self._buf += chunk
        text, self._buf = self._buf.split(b"\n", 1)
        return text.decode()

    def send(self, text: str) -> None:
        """Write one line to the child's input."""
        self.proc.stdin.write(text.encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._sel.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()  # type: ignore[union-attr]


def test_sigkill_during_saves_leaves_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "big project.studio"
    both = [project_data(crash_app.big_state(640, 640, seed)) for seed in (1, 2)]
    states = {digest(data) for data in both}
    rng = random.Random(1234)
    mid_write, kills, lost = 0, 8, 0
    for _ in range(kills):
        child = Child("save-loop", str(path))
        assert child.line() == "ready"
        time.sleep(rng.uniform(0.0, 0.35))  # the fault under test is a kill at a random moment
        child.kill()
        mid_write += any(p.name.endswith(".part") for p in tmp_path.iterdir())
        try:
            data: ProjectData | None = load_project(path)
        except ProjectError:
            data = None
        lost += lost_against(data, both)  # the file should hold the old or the new state, whole
        assert data is not None and digest(data) in states, "the file is neither the old nor the new state"
    assert mid_write >= 1, "no kill landed inside a save; the test proved nothing"
    faults.record(
        "save",
        f"SIGKILL at random moments while saving a 640×640×3-layer project ({kills} kills)",
        "file always opened and equalled the old or the new state",
        lost,
    )


def _exported(kind: str, path: Path) -> dict[str, bytes] | None:
    """What an exported file holds (the picture and its recipe, or every layer), None if unreadable."""
    from studio.files.ora import import_ora
    from studio.files.pngmeta import read_png_metadata

    try:
        if kind == "png":
            meta = read_png_metadata(path)
            if meta.request is None:  # a picture without its whole recipe is not a whole file
                return None
            return {"picture": load_picture(path).pixels.tobytes(), "recipe": repr(meta.request).encode()}
        _, _, layers = import_ora(path)
    except StudioError:
        return None
    return {
        f"layer {i}": la.pixels.tobytes() + repr((la.name, la.opacity, la.visible)).encode()
        for i, la in enumerate(layers)
    }


def _gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} outlived SIGKILL")


@pytest.mark.parametrize("kind", ["png", "ora"])
def test_sigkill_during_an_export_leaves_no_file_or_a_whole_one(tmp_path, kind):
    """50 kills at random moments while a PNG (with its recipe) or an OpenRaster file is being written
    over the same name: each leaves the file absent (only before the first write finished) or whole."""
    side, trials = 384, 50
    states = crash_app.export_states(side)
    if kind == "png":
        request = repr(crash_app.export_request()).encode()
        want = [{"picture": doc.composite().tobytes(), "recipe": request} for doc in states]
    else:
        want = [
            {
                f"layer {i}": la.pixels.tobytes() + repr((la.name, la.opacity, la.visible)).encode()
                for i, la in enumerate(doc.layers)
            }
            for doc in states
        ]
    zygote = Child("export-zygote", str(side))
    took = float(zygote.line(timeout=120).split()[1])
    path = tmp_path / f"exported.{kind}"
    rng = random.Random(5)
    mid_write = whole = lost = 0
    try:
        for _ in range(trials):
            zygote.send(f"{kind} {path}")
            pid = int(zygote.line())
            time.sleep(rng.uniform(0, 2.5 * took))  # the fault under test: a kill at a random moment
            os.kill(pid, signal.SIGKILL)
            _gone(pid)
            temps = list(tmp_path.glob(f".{path.name}.*.part"))
            mid_write += bool(temps)
            for temp in temps:  # what a killed writer leaves beside the file (the next save removes them)
                temp.unlink()
            if not path.exists():
                assert whole == 0, "a whole file disappeared"
                continue
            got = _exported(kind, path)
            lost += min(faults.bytes_lost(state, got or {}) for state in want)
            assert got in want, "the file under the final name is not a whole export"
            whole += 1
    finally:
        zygote.kill()
    assert mid_write >= 10, (
        f"only {mid_write} of {trials} kills landed inside a write; the test proved little"
    )
    faults.record(
        "export",
        f"SIGKILL at random moments during {kind.upper()} export, {side}²×3 layers ({trials} kills)",
        f"{mid_write} kills landed mid-write; the file was always absent (before the first export) or whole",
        lost,
    )


def _expected_states(seed: int) -> tuple[list[ProjectData], list[int]]:
    """The state after every journal record of a `work` run, and the index after each operation."""
    crash_app.deterministic_ids(seed)
    doc, gallery, history = Document(96, 64), Gallery(), []
    states: list[ProjectData] = []

    def snap(*_: object) -> None:
        states.append(project_data(doc, gallery, history))

    snap()
    doc.operation.connect(snap)
    gallery.added.connect(snap)
    marks = [0]
    for op in crash_app.scripted_ops(doc, gallery, history, seed):
        op()
        snap()  # the history record that follows every operation
        marks.append(len(states) - 1)
    return states, marks


def test_sigkill_during_work_recovers_the_last_finished_operation(tmp_path):
    seed = 21
    states, marks = _expected_states(seed)
    digests = [digest(state) for state in states]
    rng = random.Random(99)
    n_ops = len(marks) - 1
    lost = 0
    for attempt, target in enumerate([1, 6, 13, n_ops, rng.randint(2, n_ops - 1)]):
        data_dir = tmp_path / f"run{attempt}"
        child = Child("work", str(data_dir), str(seed))
        while (line := child.line()) != f"done {target}":
            assert line.startswith("done"), line
        time.sleep(rng.uniform(0, 0.003))
        child.kill()
        found = find_recovery(data_dir)
        assert found is not None and found.project is None
        data = recover(found)
        lost += lost_against(data, states[marks[target] :])  # any state after the acknowledged operation
        assert digest(data) in digests[marks[target] :], f"recovered state is not one after op {target}"
    faults.record(
        "journal",
        "SIGKILL at random moments during strokes, layer ops, results and undo (5 kills)",
        "recovered the exact state after the last finished operation",
        lost,
    )


def test_sigkill_after_a_generation_in_a_session_recovers_it(tmp_path):
    data_dir, expected = tmp_path / "data", tmp_path / "expected.studio"
    child = Child("generate", str(data_dir), str(expected))
    assert child.line(timeout=120) == "ready"
    child.kill()
    found = find_recovery(data_dir)
    assert found is not None
    want, got = load_project(expected), recover(found)
    lost = lost_against(got, [want])
    assert digest(got) == digest(want)
    assert any(la.source for la in got.layers) and got.results[0].request.prompt == "a small test"
    assert got.prompt_history == ["a small test"]
    faults.record(
        "journal",
        "SIGKILL after strokes, layer ops and a generation in a Session",
        "recovered document, gallery and history equal the state before the kill",
        lost,
    )


# ----------------------------------------------------------------------------- the journal, in process


def _work(doc: Document, gallery: Gallery, history: list[str], seed: int = 3, upto: int = 8) -> None:
    for op in crash_app.scripted_ops(doc, gallery, history, seed)[:upto]:
        op()


def test_journal_on_a_saved_project_recovers_and_a_clean_close_removes_it(tmp_path, qtbot):
    project = tmp_path / "work.studio"
    doc, gallery, history = Document(48, 40), Gallery(), ["first"]
    save_id = save_project(project, doc, gallery, history)
    journal = Journal(doc, gallery, tmp_path / "data", history=lambda: history)
    journal.start(project, save_id)
    assert find_recovery(tmp_path / "data", [project]) is None  # nothing done yet: nothing to offer
    _work(doc, gallery, history)
    journal.record_history()
    assert find_recovery(tmp_path / "data", [project]) is None  # in use by a running studio: no crash
    journal.abandon()  # the crash
    found = find_recovery(tmp_path / "data", [project])
    assert found is not None and found.project == project.absolute() and found.operations > 5
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))

    # A torn record at the end (the operation in progress) is dropped, nothing before it.
    with open(journal_path(project, tmp_path), "ab") as f:
        f.write(b"SJR1\x10\x00\x00\x00garbage")
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))

    journal.close()
    assert (
        not journal_path(project, tmp_path).exists() and find_recovery(tmp_path / "data", [project]) is None
    )


def test_a_save_between_journal_and_rebase_is_not_applied_twice(tmp_path, qtbot):
    project = tmp_path / "work.studio"
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path / "data", history=lambda: history)
    journal.start(project, save_project(project, doc, gallery, history))
    _work(doc, gallery, history)
    # The process dies right after the new save replaced the file, before the journal was rebased.
    save_project(project, doc, gallery, history)
    journal.abandon()
    found = find_recovery(tmp_path / "data", [project])
    assert found is not None
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))
    journal.close()


def test_compaction_and_unknown_commands_take_a_snapshot(tmp_path, qtbot):
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path, history=lambda: history, max_bytes=20_000)
    journal.start()
    assert find_recovery(tmp_path) is None  # a blank canvas is not worth offering
    _work(doc, gallery, history, upto=14)  # results add full layers: the size limit forces compactions
    journal.wait()  # snapshots are written on a worker (tests/test_background_snapshots.py)
    assert journal.path is not None and snapshot_path(journal.path).exists()
    assert os.path.getsize(journal.path) < 20_000 + 48 * 40 * 8

    class Crop(studio.commands.Command):
        def apply(self, d: Document) -> None:
            d.layers[0].name = "cropped"

        def revert(self, d: Document) -> None:
            pass

    doc.push(Crop())
    journal.wait()
    journal.abandon()
    found = find_recovery(tmp_path)
    assert found is not None
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))
    journal.close()
    assert list(tmp_path.glob("recovery/*")) == []


def test_the_timer_compacts_a_grown_journal(tmp_path, qtbot):
    doc, gallery, history = Document(48, 40), Gallery(), []
    journal = Journal(doc, gallery, tmp_path, history=lambda: history, snapshot_every_ms=20)
    journal.timer_min_bytes = 10_000
    journal.start()
    assert journal.path is not None
    _work(doc, gallery, history, upto=6)  # holds a result layer: over 10 kB
    grown = os.path.getsize(journal.path)
    assert grown > 10_000
    qtbot.waitUntil(lambda: os.path.getsize(journal.path) < 1_000, timeout=5000)
    journal.abandon()
    found = find_recovery(tmp_path)
    assert found is not None and found.operations == 0  # all of it now lives in the snapshot
    assert digest(recover(found)) == digest(project_data(doc, gallery, history))
    journal.close()


def test_a_long_session_of_signal_emits_does_not_abort_the_process(tmp_path):
    """PySide6 6.12's emit() drops a reference to True per call: without the fix a fresh process aborts."""
    code = (
        "import sys\n"
        "from studio.document import Document\n"
        "from studio.files.project import save_project\n"
        "doc = Document(8, 8)\n"
        "doc.paint(doc.layers[0].id, 2, 2, __import__('numpy').full((3, 3, 4), 7, 'uint8'))\n"
        "save_project(sys.argv[1], doc)\n"
        "for _ in range(60_000):\n"
        "    doc.changed.emit('pixels')\n"
        "save_project(sys.argv[2], doc)\n"
        "print('alive')\n"
    )
    before, after = tmp_path / "before.studio", tmp_path / "after.studio"
    done = subprocess.run(
        [sys.executable, "-c", code, str(before), str(after)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The document as it stood before the emits against the one after them (none if the process died).
    lost = lost_against(load_project(after) if after.exists() else None, [load_project(before)])
    assert done.returncode == 0 and "alive" in done.stdout, done.stderr[-500:]
    faults.record(
        "process",
        "60000 Qt signal emits in one process (PySide6 6.12 refcount bug)",
        "process kept running; the document after the emits equals the one before",
        lost,
    )


def test_a_journal_follows_the_document_from_project_to_untitled_and_back(tmp_path, qtbot):
    doc, gallery = Document(16, 16), Gallery()
    project = tmp_path / "p.studio"
    journal = Journal(doc, gallery, tmp_path / "data")
    journal.start(project, save_project(project, doc))
    assert journal.path == journal_path(project, tmp_path)
    journal.start(None)  # an imported .ora: no project file any more
    assert journal.path is not None and journal.path.parent == tmp_path / "data" / "recovery"
    assert not journal_path(project, tmp_path).exists()
    untitled = journal.path
    journal.compact()
    assert journal.path == untitled  # compaction keeps the untitled journal's name
    journal.note_saved(project, save_project(project, doc))
    assert journal.path == journal_path(project, tmp_path) and not untitled.exists()
    journal.close()


def test_recovery_restores_the_layer_chosen_in_the_layers_panel(tmp_path, qtbot):
    from ui.layers_panel import LayersPanel

    project = tmp_path / "work.studio"
    doc, gallery = Document(32, 24), Gallery()
    ink = doc.add_layer("ink")
    doc.add_layer("top")
    journal = Journal(doc, gallery, tmp_path / "data")
    journal.start(project, save_project(project, doc, gallery))
    panel = LayersPanel(doc)
    qtbot.addWidget(panel)
    undo_label = doc.undo_label
    with qtbot.waitSignal(doc.active_changed):
        panel.list.setCurrentRow(1)  # rows list the top layer first: row 1 is "ink"
    assert doc.active_id == ink.id and doc.undo_label == undo_label  # a choice, not an undo step
    journal.abandon()  # the crash
    assert find_recovery(tmp_path / "data", [project]) is None  # a choice alone is no work to offer
    journal.start(project, save_project(project, doc, gallery))
    panel.list.setCurrentRow(2)  # the background
    doc.add_layer("after")  # goes above the background and becomes active; its record says so...
    assert [la.name for la in doc.layers] == ["Background", "after", "ink", "top"]
    panel.list.setCurrentRow(1)  # ...and choosing "ink" afterwards is the last word
    assert doc.active_id == ink.id
    journal.abandon()
    found = find_recovery(tmp_path / "data", [project])
    assert found is not None and found.operations == 1
    data = recover(found)
    assert data.active_id == ink.id and data.active_id != data.layers[-1].id
    assert digest(data) == digest(project_data(doc, gallery, []))
    journal.close()
