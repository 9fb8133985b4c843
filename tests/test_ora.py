"""OpenRaster export and import: every layer with its name, opacity and visibility, exact pixels back."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image

from studio.document import Document
from studio.files.archive import ProjectError, png_bytes
from studio.files.ora import export_ora, import_ora
from studio.layers import Layer


def _document() -> Document:
    rng = np.random.default_rng(4)
    doc = Document(50, 30)
    doc.add_layer("sketch ✎", rng.integers(0, 255, (30, 50, 4), dtype=np.uint8))
    doc.set_layer(doc.active_id, opacity=0.5)
    hidden = doc.add_layer("hidden", rng.integers(0, 255, (30, 50, 4), dtype=np.uint8))
    doc.set_layer(hidden.id, visible=False)
    return doc


def test_export_holds_every_layer_and_import_gives_the_same_pixels(tmp_path):
    doc = _document()
    path = tmp_path / "my picture.ora"
    export_ora(path, doc)
    with zipfile.ZipFile(path) as z:
        first = z.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert z.read("mimetype") == b"image/openraster"
        root = ET.fromstring(z.read("stack.xml"))
        merged = np.asarray(Image.open(io.BytesIO(z.read("mergedimage.png"))))
        thumb = Image.open(io.BytesIO(z.read("Thumbnails/thumbnail.png")))
    assert (root.get("w"), root.get("h")) == ("50", "30")
    names = [(e.get("name"), e.get("opacity"), e.get("visibility")) for e in root.iter("layer")]
    assert names == [
        ("hidden", "1.0000", "hidden"),
        ("sketch ✎", "0.5000", "visible"),
        ("Background", "1.0000", "visible"),
    ]
    assert np.array_equal(merged, doc.composite()) and max(thumb.size) <= 256

    width, height, layers = import_ora(path)
    assert (width, height) == (50, 30)
    assert [(la.name, la.opacity, la.visible) for la in layers] == [
        (la.name, la.opacity, la.visible) for la in doc.layers
    ]
    for got, want in zip(layers, doc.layers, strict=True):
        assert np.array_equal(got.pixels, want.pixels)


def test_import_places_offset_layers_and_flattens_groups(tmp_path):
    """Krita and MyPaint write layers smaller than the canvas with x/y offsets, and nested stacks."""
    path = tmp_path / "krita.ora"
    red = np.zeros((4, 6, 4), np.uint8)
    red[...] = (255, 0, 0, 255)
    stack = (
        '<?xml version="1.0" encoding="UTF-8"?><image w="20" h="10" version="0.0.3"><stack>'
        '<stack name="group"><layer name="red" src="data/red.png" x="17" y="-1" opacity="0.25"/></stack>'
        '<layer name="bg" src="data/bg.png" visibility="visible"/></stack></image>'
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "image/openraster")
        z.writestr("stack.xml", stack)
        z.writestr("data/red.png", png_bytes(red))
        z.writestr("data/bg.png", png_bytes(np.full((10, 20, 4), 255, np.uint8)))
    width, height, layers = import_ora(path)
    assert (width, height) == (20, 10) and [la.name for la in layers] == ["bg", "red"]
    top = layers[1]
    # The layer keeps its own size (clipped to the canvas) at its offset: not padded to 20×10.
    assert top.opacity == 0.25 and top.bounds == (17, 0, 3, 3)
    full = top.full(width, height)
    assert (full[0:3, 17:20] == (255, 0, 0, 255)).all() and full[3:, :].sum() == 0 and full[:, :17].sum() == 0


def test_offset_layers_round_trip_at_their_own_size(tmp_path):
    doc = Document(40, 30)
    dot = np.zeros((5, 7, 4), np.uint8)
    dot[...] = (0, 200, 0, 255)
    doc.layers.append(Layer("dot", dot, x=30, y=20))
    export_ora(tmp_path / "dot.ora", doc)
    with zipfile.ZipFile(tmp_path / "dot.ora") as z:
        stack = z.read("stack.xml").decode()
    assert 'x="30"' in stack and 'y="20"' in stack
    width, height, layers = import_ora(tmp_path / "dot.ora")
    assert layers[1].bounds == (30, 20, 7, 5) and np.array_equal(layers[1].pixels, dot)
    assert np.array_equal(Document(width, height, layers).composite(), doc.composite())


@pytest.mark.parametrize(
    "stack, extra, message",
    [
        (
            '<?xml version="1.0"?><!DOCTYPE i [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            '<image w="4" h="4"><stack><layer src="data/a.png" name="&b;"/></stack></image>',
            None,
            "entities",
        ),
        ('<image w="4" h="4"><stack><layer src="../a.png"/></stack></image>', None, "unsafe name"),
        (
            '<image w="4" h="4"><stack><layer src="data/a.png"/></stack></image>',
            ("../evil", b"x"),
            "unsafe name",
        ),
        ('<image w="four" h="4"><stack/></image>', None, "whole number"),
        ("<image", None, "not valid XML"),
    ],
)
def test_hostile_ora_files_are_refused(tmp_path, stack, extra, message):
    path = tmp_path / "bad.ora"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "image/openraster")
        z.writestr("stack.xml", stack)
        z.writestr("data/a.png", png_bytes(np.zeros((4, 4, 4), np.uint8)))
        if extra:
            z.writestr(*extra)
    with pytest.raises(ProjectError, match=message):
        import_ora(path)
