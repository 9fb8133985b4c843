"""Small files that declare large documents (issue 9, items 1 and 2) open within the memory rule.

Each file is opened as the window opens it (read, build the document, composite once) in a forked child
under an address-space limit (tests/hostile_child.py): opening may cost at most the larger of 1 GiB and
1.5× the uint8 pixels the file honestly declares; a canvas beyond the limit in the settings is refused
before anything is allocated, within 1 GiB and 10 s.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import faults
import numpy as np
import pytest
from hostile_child import GIB, REFUSAL_BUDGET, REFUSAL_CPU_S, declared_bytes, opening_budget
from hostile_files import blank_png, good_project, ora, rewrite

from studio.document import MAX_CANVAS_PIXELS, Document
from studio.files.archive import png_bytes
from studio.files.ora import import_ora
from studio.files.project import ProjectError, load_project

OPEN_CPU_S = 60.0  # an 8192² canvas is a lot of pixels for a busy 2-core machine; what matters is memory


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


def dot_png() -> bytes:
    return png_bytes(np.array([[[255, 0, 0, 255]]], np.uint8))


def test_an_ora_declaring_a_16384_canvas_for_one_pixel_is_refused_before_allocating(tmp_path, prober):
    path = ora(tmp_path / "huge.ora", 16384, 16384, [("data/dot.png", dot_png())])
    assert path.stat().st_size < 2048
    with pytest.raises(ProjectError, match="megapixels"):
        import_ora(path)
    before = faults.snapshot(files=[path])
    cost = prober.open(path, "ora", REFUSAL_BUDGET, REFUSAL_CPU_S)
    assert cost.outcome == "refused" and "16384×16384" in cost.message, cost
    assert cost.vm_peak < GIB and cost.cpu_s < REFUSAL_CPU_S, cost
    faults.record(
        "OpenRaster file",
        f"a {path.stat().st_size}-byte .ora declaring a 16384² canvas for one 1×1 layer",
        "refused before anything is allocated: " + cost.message.split(": ", 1)[1],
        faults.bytes_lost(before, faults.snapshot(files=[path])),
        cost,
    )


def test_an_ora_layer_stays_at_its_own_size_on_a_large_canvas(tmp_path, prober):
    """One 1×1 layer on the largest canvas allowed: the layer costs 4 bytes, not a padded canvas."""
    path = ora(tmp_path / "dot.ora", 8192, 8192, [("data/dot.png", dot_png())], [{"x": "100", "y": "200"}])
    budget = opening_budget(declared_bytes(path))
    before = faults.snapshot(files=[path])
    cost = prober.open(path, "ora", budget, OPEN_CPU_S)
    assert cost.outcome == "opened", cost
    assert cost.vm_peak <= budget, cost
    # The picture (3 bytes a pixel) and the mask (1) are the whole cost: about 256 MiB, not 1.3 GiB.
    assert cost.rss_peak < 8192 * 8192 * 6, cost
    outcome = f"opened within the budget of {budget / 2**30:.1f} GiB; the layer stays 1×1 at its offset"
    lost = faults.bytes_lost(before, faults.snapshot(files=[path]))
    faults.record("OpenRaster file", "one 1×1 layer on an 8192² canvas", outcome, lost, cost)
    width, height, layers = import_ora(path)
    assert layers[0].bounds == (100, 200, 1, 1)
    doc = Document(width, height, layers)
    assert tuple(doc.composite()[200, 100]) == (255, 0, 0)


def test_a_raised_canvas_limit_opens_the_16384_ora_with_its_layer_unpadded(tmp_path):
    path = ora(tmp_path / "huge.ora", 16384, 16384, [("data/dot.png", dot_png())])
    tracemalloc.start()
    try:
        width, height, layers = import_ora(path, max_pixels=16384 * 16384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (width, height) == (16384, 16384) and layers[0].pixels.shape == (1, 1, 4)
    assert peak < 16 * 2**20  # before: the layer padded to the canvas, 1 GiB


def blank_layers_project(path: Path, side: int = 8192, count: int = 5) -> Path:
    """A few-kB project: a side² canvas whose `count` layers all name one blank PNG (issue 9, item 2)."""
    good = good_project(path.with_name("good.studio"))
    layers = [{"id": f"l{i}", "name": f"blank {i}", "image": "layers/blank.png"} for i in range(count)]
    return rewrite(
        good,
        path,
        lambda m: m.update(canvas={"width": side, "height": side}, layers=layers, active_layer=None),
        replace={"mask.png": blank_png(side, side)},
        extra=[("layers/blank.png", blank_png(side, side))],
    )


def test_a_project_of_five_layers_naming_one_blank_8192_image_opens_within_the_rule(tmp_path, prober):
    path = blank_layers_project(tmp_path / "blank.studio")
    assert path.stat().st_size < 1024 * 1024
    budget = opening_budget(declared_bytes(path))
    before = faults.snapshot(files=[path])
    cost = prober.open(path, "studio", budget, OPEN_CPU_S)
    assert cost.outcome == "opened", cost
    assert cost.vm_peak <= budget, cost
    # One decoded layer shared by all five (copy-on-write), the mask and the picture: under 1 GiB
    # resident, where padding and a float composite took 5.2 GB.
    assert cost.rss_peak < GIB, cost
    outcome = f"opened within the budget of {budget / 2**30:.1f} GiB; the five layers share one image"
    label = f"a {path.stat().st_size / 1024:.1f} kB .studio: five 8192² layers naming one blank PNG"
    faults.record(
        "project file", label, outcome, faults.bytes_lost(before, faults.snapshot(files=[path])), cost
    )


def test_layers_that_name_one_image_share_it_until_one_is_painted(tmp_path):
    path = blank_layers_project(tmp_path / "small.studio", side=64, count=3)
    data = load_project(path)
    assert len({id(layer.pixels) for layer in data.layers}) == 1
    doc = Document(8, 8)
    data.apply_to(doc)
    first, second = doc.layers[0], doc.layers[1]
    doc.paint(first.id, 0, 0, np.full((2, 2, 4), 200, np.uint8))
    assert first.pixels is not second.pixels
    assert (first.region(0, 0, 2, 2) == 200).all() and not second.pixels.any()


def test_the_canvas_limit_is_a_setting(tmp_path):
    from studio.settings import Settings

    settings = Settings(str(tmp_path / "s.ini"))
    assert settings.max_canvas_pixels == MAX_CANVAS_PIXELS
    settings.max_canvas_pixels = 1024 * 1024
    assert Settings(str(tmp_path / "s.ini")).max_canvas_pixels == 1024 * 1024
    path = blank_layers_project(tmp_path / "mid.studio", side=2048, count=1)
    with pytest.raises(ProjectError, match="larger than the 1 megapixels"):
        load_project(path, max_pixels=settings.max_canvas_pixels)
