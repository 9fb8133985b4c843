"""Project files: a save and load round trip keeps everything; saves are atomic; old versions migrate."""

from __future__ import annotations

import json
import os
import zipfile

import faults
import numpy as np
import pytest

from backend.images import Picture
from backend.request import Request
from studio.document import Document
from studio.files.atomic import atomic_write
from studio.files.project import FORMAT_VERSION, ProjectError, load_project, save_project
from studio.gallery import Gallery, Result


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


def sample(width: int = 40, height: int = 32) -> tuple[Document, Gallery, list[str]]:
    """A document with painted, hidden, half-opaque and generated layers, a mask, and a two-step lineage."""
    rng = np.random.default_rng(7)
    doc = Document(width, height)
    gallery = Gallery()
    init = Picture(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    first = Result(
        rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
        Request(prompt="a red fox, 狐", seed=3, width=40, height=32),
        extras={"references": {"fox.png": np.float32(0.75)}, "model_hash": "abc", "steps": np.int64(3)},
        attribution=rng.integers(0, 3, (height, width), dtype=np.int16),
    )
    gallery.add(first)
    doc.add_layer("fox", first.image, source=first.id)
    doc.paint(doc.active_id, 5, 5, np.full((6, 6, 4), (10, 200, 30, 255), np.uint8))
    second = Result(
        rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
        Request(prompt="a red fox, evening", init_image=init, strength=0.5, width=40, height=32),
        parents=(first.id,),
        painted=True,
    )
    gallery.add(second)
    doc.add_layer("evening", second.image, source=second.id)
    doc.set_layer(doc.active_id, opacity=0.4)
    ink = doc.add_layer("ink")
    doc.paint(ink.id, 0, 0, rng.integers(0, 255, (10, 12, 4), dtype=np.uint8))
    doc.set_layer(ink.id, visible=False)
    doc.paint_mask(8, 8, np.full((5, 9), 255, np.uint8))
    return doc, gallery, ["a red fox, 狐", "a red fox, evening"]


def assert_same_document(data, doc: Document, gallery: Gallery, history: list[str]) -> None:
    """The loaded project holds exactly the document, gallery and history that were saved."""
    assert (data.width, data.height) == (doc.width, doc.height)
    assert [(la.id, la.name, la.opacity, la.visible, la.source, la.painted) for la in data.layers] == [
        (la.id, la.name, la.opacity, la.visible, la.source, la.painted) for la in doc.layers
    ]
    for got, want in zip(data.layers, doc.layers, strict=True):
        assert np.array_equal(got.pixels, want.pixels)
    assert np.array_equal(data.mask, doc.mask)
    assert data.active_id == doc.active_id
    assert [r.id for r in data.results] == [r.id for r in gallery.results]
    for got, want in zip(data.results, gallery.results, strict=True):
        assert np.array_equal(got.image, want.image)
        assert got.request == want.request
        assert (got.parents, got.painted, got.created) == (want.parents, want.painted, want.created)
        assert got.extras == want.extras
        if want.attribution is None:
            assert got.attribution is None
        else:
            assert np.array_equal(got.attribution, want.attribution)
    assert data.prompt_history == history


def test_round_trip_keeps_layers_mask_gallery_history_and_lineage(tmp_path):
    doc, gallery, history = sample()
    path = tmp_path / "my fox ✓.studio"
    save_project(path, doc, gallery, history)
    data = load_project(path)
    assert_same_document(data, doc, gallery, history)
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["version"] == FORMAT_VERSION
    assert manifest["lineage"] == [[gallery.results[0].id, gallery.results[1].id]]
    assert zipfile.ZipFile(path).namelist()[0] == "mimetype"

    # Applying the data to a fresh document and gallery gives the same chain the gallery showed.
    doc2, gallery2 = Document(8, 8), Gallery()
    data.apply_to(doc2, gallery2)
    assert doc2.is_clean and [la.id for la in doc2.layers] == [la.id for la in doc.layers]
    assert [r.id for r in gallery2.chain(gallery.results[1].id)] == [
        r.id for r in gallery.chain(gallery.results[1].id)
    ]


def test_save_leaves_no_temporary_files_and_replaces_the_old_file(tmp_path):
    doc, gallery, history = sample()
    path = tmp_path / "p.studio"
    save_project(path, doc, gallery, history)
    doc.add_layer("later")
    save_project(path, doc, gallery, history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.studio"]
    assert [la.name for la in load_project(path).layers][-1] == "later"


def test_a_failing_save_keeps_the_previous_file(tmp_path):
    doc, gallery, history = sample()
    path = tmp_path / "p.studio"
    save_project(path, doc, gallery, history)
    before = path.read_bytes()

    def broken_writer(handle):
        handle.write(b"half a project")
        raise OSError(28, "No space left on device")

    state = faults.snapshot(files=[path])
    with pytest.raises(OSError):
        atomic_write(path, broken_writer)
    lost = faults.bytes_lost(state, faults.snapshot(files=[path]))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.studio"]
    faults.record("save", "writer fails half-way (disk full)", "OSError raised; old file intact", lost)


def test_saving_into_a_missing_folder_is_a_clear_error(tmp_path):
    doc, gallery, history = sample()
    with pytest.raises(ProjectError, match="could not save"):
        save_project(tmp_path / "nope" / "p.studio", doc, gallery, history)


def test_format_zero_is_migrated(tmp_path):
    """The unversioned draft format (size list, layers without ids, `history`) opens after migration."""
    path = tmp_path / "old.studio"
    red = np.zeros((4, 6, 4), np.uint8)
    red[...] = (255, 0, 0, 255)
    from studio.files.archive import png_bytes

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.png", png_bytes(red))
        z.writestr("m.png", png_bytes(np.zeros((4, 6), np.uint8)))
        z.writestr(
            "manifest.json",
            json.dumps(
                {
                    "format": "studio-project",
                    "size": [6, 4],
                    "layers": [{"name": "paint", "opacity": 0.5, "visible": True, "image": "a.png"}],
                    "mask": "m.png",
                    "history": ["old prompt"],
                }
            ),
        )
    data = load_project(path)
    # What the old file held (its layer, mask and history) against what the migration kept.
    held = {"layer": red.tobytes(), "mask": bytes(24), "history": b"old prompt"}
    kept = {"layer": data.layers[0].pixels.tobytes(), "mask": data.mask.tobytes()}
    kept["history"] = "\n".join(data.prompt_history).encode()
    lost = faults.bytes_lost(held, kept)
    assert (data.width, data.height) == (6, 4)
    assert data.layers[0].name == "paint" and data.layers[0].opacity == 0.5 and data.layers[0].id
    assert np.array_equal(data.layers[0].pixels, red)
    assert data.prompt_history == ["old prompt"]
    assert any("format 0" in note for note in data.notes)
    faults.record("project file", "format 0 (older) manifest", "migrated and opened", lost)


def test_a_newer_format_is_refused_and_never_overwritten(tmp_path):
    doc, gallery, history = sample()
    path = tmp_path / "future.studio"
    save_project(path, doc, gallery, history)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["version"] = FORMAT_VERSION + 1
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    before = path.read_bytes()
    mtime = os.stat(path).st_mtime_ns
    with pytest.raises(ProjectError, match="newer studio"):
        load_project(path)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime


def test_an_images_chain_survives_a_project_round_trip_and_export(tmp_path, capsys):
    """Lineage saved in a project comes back, is exported into the PNG, and `studio-cli info` prints it."""
    from studio.cli.main import main
    from studio.files.pngmeta import read_png_metadata, save_png
    from studio.recipe import Provenance, ancestors_of

    doc, gallery, history = sample()
    first, second = gallery.results
    third = Result(
        np.full((32, 40, 3), 90, np.uint8),
        Request(prompt="a red fox at night", width=40, height=32),
        parents=(second.id,),
    )
    gallery.add(third)
    path = tmp_path / "lineage.studio"
    save_project(path, doc, gallery, history)
    reopened = Gallery()
    reopened.replace_all(load_project(path).results)
    newest = reopened.results[-1]
    chain = reopened.chain(newest.id)[1:]
    assert [r.id for r in chain] == [second.id, first.id]
    png = tmp_path / "exported fox.png"
    provenance = Provenance(newest.id, newest.parents, newest.painted, ancestors_of(chain))
    save_png(png, newest.image, newest.request, newest.extras, provenance)

    assert main(["info", str(png)]) == 0
    text = capsys.readouterr().out
    assert "chain" in text and text.index(second.id) < text.index(first.id)
    assert "a red fox, evening" in text and "painted" in text  # the ancestor's recipe and painted mark
    meta = read_png_metadata(png)  # re-import: the chain and the request come back from the file
    assert meta.provenance is not None and meta.request == newest.request
    assert [(a.id, a.parents, a.painted) for a in meta.provenance.chain] == [
        (second.id, (first.id,), True),
        (first.id, (), False),
    ]
