"""The document model: layer operations and strokes undo and redo exactly."""

from __future__ import annotations

import numpy as np

from studio.document import Document


def test_paint_undo_redo_restores_pixels_exactly():
    doc = Document(32, 24)
    layer = doc.add_layer("ink")
    before = layer.pixels.copy()
    stroke = np.zeros((5, 6, 4), dtype=np.uint8)
    stroke[...] = (200, 10, 10, 255)
    doc.paint(layer.id, 30, 20, stroke)  # partly off the canvas: clipped
    assert (layer.pixels[20:24, 30:32] == (200, 10, 10, 255)).all()
    after = layer.pixels.copy()
    assert doc.undo()
    assert np.array_equal(layer.pixels, before)
    assert doc.redo()
    assert np.array_equal(layer.pixels, after)


def test_layer_operations_are_undoable_and_track_clean_state():
    doc = Document(16, 16)
    seen = []
    doc.operation.connect(lambda what, cmd: seen.append((what, cmd.label)))
    assert doc.is_clean
    top = doc.add_layer("top")
    copy = doc.duplicate_layer(top.id)
    doc.set_layer(copy.id, name="renamed", opacity=0.5, visible=False)
    doc.move_layer(copy.id, 0)
    assert [layer.name for layer in doc.layers] == ["renamed", "Background", "top"]
    assert not doc.is_clean
    doc.delete_layer(top.id)
    assert [layer.name for layer in doc.layers] == ["renamed", "Background"]
    for _ in range(5):
        assert doc.undo()
    assert [layer.name for layer in doc.layers] == ["Background"]
    assert doc.is_clean and not doc.undo()
    doc.redo()
    doc.set_clean()
    doc.undo()
    doc.add_layer("other")  # the saved state is no longer reachable
    assert not doc.is_clean
    assert seen[0] == ("do", "Add layer") and ("undo", "Delete layer") in seen


def test_composite_blends_visible_layers_over_white_with_opacity():
    doc = Document(4, 4, layers=[])
    assert (doc.composite() == 255).all()
    red = np.zeros((4, 4, 4), dtype=np.uint8)
    red[...] = (255, 0, 0, 255)
    layer = doc.add_layer("red", red)
    doc.set_layer(layer.id, opacity=0.5)
    # Opacity becomes an 8-bit alpha (0.5 → 128/255), blended in integers: 255 × 127/255 = 127.
    assert tuple(doc.composite()[0, 0]) == (255, 127, 127)
    doc.set_layer(layer.id, visible=False)
    assert (doc.composite() == 255).all()


def test_generated_layer_marked_painted_by_a_stroke_and_unmarked_by_undo():
    doc = Document(8, 8)
    result = doc.add_layer("result", np.zeros((8, 8, 3), dtype=np.uint8), source="abc")
    assert not result.painted
    doc.paint(result.id, 0, 0, np.full((2, 2, 4), 255, dtype=np.uint8))
    assert result.painted
    doc.undo()
    assert not result.painted
