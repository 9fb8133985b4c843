"""Slow work stays off the GUI thread: model discovery, reference listing, the engine warm-up (after the
first paint), and the composite (once per paint however many changes came in between)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
from fake_engine import FakeEngine, make_references
from PySide6.QtWidgets import QLabel

from studio.document import Document
from studio.session import Session
from studio.settings import Settings
from ui.canvas import CanvasView
from ui.main_window import MainWindow


def test_model_discovery_runs_on_a_worker_and_fills_the_list_when_done(make_window, qtbot):
    window = make_window(FakeEngine(steps=1))
    picker = window.engine_picker
    release = threading.Event()
    ran_on: list[str] = []

    def slow_discovery() -> list[tuple[str, str]]:
        ran_on.append(threading.current_thread().name)
        release.wait(10)  # a scan of a slow disk: the window must not wait for it
        return [("tiny (SD 1.x)", "/models/tiny")]

    picker.discover = slow_discovery
    picker.start_discovery()
    assert picker.searching and picker.findText("Looking for models on this machine…") >= 0
    picker.setCurrentIndex(0)  # the window still responds while the scan runs
    release.set()
    qtbot.waitUntil(lambda: picker.findData("diffusers|/models/tiny") >= 0)
    assert ran_on == ["studio-discover"] and not picker.searching
    assert picker.findText("Looking for models on this machine…") < 0


def test_the_reference_folder_is_read_on_a_worker(make_window, qtbot, tmp_path):
    window = make_window(FakeEngine(steps=1))
    sliders = window.slider_panel
    folder = make_references(tmp_path / "refs", count=4)
    window.session.model.set(engine="patch", model=str(folder), reference_weights=(("texture2", 1.5),))
    labels = [w.text() for w in sliders.patch_box.findChildren(QLabel)]
    assert "Reading the reference images…" in labels and not sliders.reference_sliders
    qtbot.waitUntil(lambda: len(sliders.reference_sliders) == 4)
    assert sliders.reference_sliders["texture2"].value() == 1.5  # the weight shows once the row exists


def test_a_folder_chosen_while_another_is_read_wins(make_window, qtbot, tmp_path):
    window = make_window(FakeEngine(steps=1))
    sliders = window.slider_panel
    first = make_references(tmp_path / "first", count=5)
    second = make_references(tmp_path / "second", count=2)
    window.session.model.set(engine="patch", model=str(first))
    window.session.model.set(model=str(second))
    qtbot.waitUntil(lambda: len(sliders.reference_sliders) == 2)
    # The first folder's answer arriving late must not replace the second folder's rows.
    sliders._references_listed((str(first), [f"texture{i}" for i in range(5)], "", []), None)
    assert list(sliders.reference_sliders) == ["texture0", "texture1"]


def test_the_warm_up_and_discovery_start_after_the_first_paint(qtbot, tmp_path):
    from ui.app import AfterFirstPaint

    settings = Settings(str(tmp_path / "settings.ini"))
    session = Session(engine=FakeEngine(steps=1), document=Document(64, 64), settings=settings)
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.engine_picker.discover = list
    launch = AfterFirstPaint(window)
    assert launch.warm is None and launch.painted_at is None  # nothing started while building
    with qtbot.waitSignal(launch.painted, timeout=10_000):
        window.show()
    assert launch.painted_at is not None and launch.warm is not None
    assert window.engine_picker.discover is None  # discovery was started
    launch.warm.join(60)
    window.close()


def test_many_layer_changes_between_two_paints_cost_one_composite(qtbot):
    doc = Document(128, 128)
    canvas = CanvasView(doc)
    qtbot.addWidget(canvas)
    canvas.show()
    qtbot.waitExposed(canvas)
    canvas.composite_image()
    before = canvas._compositor.blends
    for i in range(5):  # a live result: undo the old layer, add the new one, select the old layer back...
        doc.add_layer(f"l{i}", np.full((128, 128, 3), 40 * i, np.uint8))
    doc.set_layer(doc.layers[2].id, opacity=0.5)
    image = canvas.composite_image()
    assert canvas._compositor.blends - before <= len(doc.layers)  # one pass over the layers, not six
    assert image.pixelColor(5, 5).red() == int(doc.composite()[5, 5, 0])


def test_a_live_img2img_run_takes_its_input_from_the_canvas_cache(make_window, qtbot, monkeypatch):
    import studio.compositing

    window = make_window(FakeEngine(steps=1), size=96)
    doc, runs, model = window.document, window.session.runs, window.session.model
    rng = np.random.default_rng(7)
    for i in range(4):  # a painted document: every layer would have to be blended again
        layer = doc.add_layer(f"ink {i}")
        doc.paint(layer.id, 0, 0, rng.integers(0, 255, (96, 96, 4), dtype=np.uint8))
    model.set_mode("img2img")
    model.set(strength=0.5)
    with qtbot.waitSignal(runs.result_added, timeout=5000):
        window.live_action.setChecked(True)  # the live result lands on top, where the canvas shows it
    window.canvas.composite_image()  # as the paint after it did
    blended: list[int] = []
    original = studio.compositing._blend_layer
    monkeypatch.setattr(studio.compositing, "_blend_layer", lambda *a: (blended.append(1), original(*a))[1])
    request, _ = runs.build(live=True)  # the next slider move's input: the canvas under the live result
    # The canvas keeps the layers below the one being painted (ink 3) blended: only ink 3 is blended
    # again over that cache, not all five layers (the live result on top is not part of the input).
    assert doc.active.name == "ink 3" and blended == [1]
    below = studio.compositing.composite(doc.layers[:-1], 96, 96)
    assert np.array_equal(request.init_image.pixels, below)


def test_exports_are_written_on_a_worker_from_the_canvas_as_it_was(make_window, qtbot, tmp_path, monkeypatch):
    from PIL import Image

    import ui.exports
    from studio.files.ora import import_ora
    from studio.files.pngmeta import read_png_metadata

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    before = doc.composite()
    gate, threads = threading.Event(), []
    original = ui.exports.composite

    def held(*args):  # noqa: ANN002, ANN202 - the export's composite, held until the test lets it go
        threads.append(threading.current_thread().name)
        gate.wait(10)
        return original(*args)

    monkeypatch.setattr(ui.exports, "composite", held)
    png = tmp_path / "out.png"
    assert window.start_export(str(png), "png")
    doc.fill(doc.active_id, (10, 200, 30, 255))  # the window is free while the file is written
    assert not png.exists() and threads == ["studio-export"]
    gate.set()
    qtbot.waitUntil(lambda: "Saved" in window.status.message.text(), timeout=10_000)
    written = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(written, before)  # the canvas when Export was chosen, not the fill after it
    assert read_png_metadata(png).request is not None  # with the recipe of the result it shows

    ora = tmp_path / "out.ora"
    assert window.start_export(str(ora), "ora")
    qtbot.waitUntil(lambda: str(ora) in window.status.message.text(), timeout=10_000)
    width, height, layers = import_ora(ora)
    assert (width, height) == (doc.width, doc.height) and len(layers) == len(doc.layers)
    assert threads[-1] == "studio-export"


def test_building_the_window_imports_no_torch(tmp_path):
    # Importing torch takes about 1.6 s here, on the GUI thread if the window's modules pull it in: the
    # first paint must not wait for it (the warm-up imports it on a thread after that paint).
    code = (
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from studio.settings import Settings\n"
        "from ui.app import build_window\n"
        "window = build_window(Settings(sys.argv[1]))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'ray') if m in sys.modules))\n"
        "window.session.shutdown()\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.ini")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_a_model_lookup_started_again_keeps_only_the_newest_answer(qtbot):
    # ControlNets and LoRAs are looked for with one ModelLookup each: a folder added while a look runs
    # starts another, and the first one's answer, arriving later, must not replace the newer one.
    from ui.workers import ModelLookup, labelled_models

    release = threading.Event()

    class Found:
        def __init__(self, name: str, pickle: bool) -> None:
            self.name, self.path, self.pickle = name, f"/m/{name}", pickle

    def discover(folder: str, allow_pickle: bool) -> list[tuple[str, str]]:
        if folder == "slow":
            release.wait(5)
        return labelled_models(lambda f: [Found(f, False), Found(f + "-old", True)], allow_pickle, folder)

    lookup = ModelLookup("test", discover)
    lookup.look("slow", False)
    lookup.look("ignored", False)  # a look is running: no second one
    with qtbot.waitSignal(lookup.ready, timeout=5000):
        lookup.again("new", True)
    assert lookup.found == [("new", "/m/new"), ("new-old (pickle)", "/m/new-old")]
    release.set()  # the slow, overtaken look ends now
    qtbot.wait(100)
    assert lookup.found == [("new", "/m/new"), ("new-old (pickle)", "/m/new-old")]
    lookup.look("other", False)  # an answer is kept: no new look
    assert lookup.found is not None and lookup.found[0][0] == "new"
