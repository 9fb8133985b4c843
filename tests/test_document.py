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


def test_undo_history_is_capped_by_memory_dropping_the_oldest_steps():
    doc = Document(64, 64)
    doc.history.limit_bytes = 100_000
    layer = doc.layers[0]
    doc.set_clean()
    shades = list(range(10, 130, 10))
    for shade in shades:  # each stroke keeps its before and after: 2 × 64×64×4 = 32 KiB
        doc.paint(layer.id, 0, 0, np.full((64, 64, 4), shade, np.uint8))
    assert doc.history.bytes <= 100_000 and doc.history.dropped > 0
    kept = len(doc.history.done)
    assert kept == len(shades) - doc.history.dropped and kept >= 1
    while doc.undo():
        pass
    # The oldest reachable state is the one after the last dropped stroke; the saved one is gone for good.
    assert (layer.pixels == shades[doc.history.dropped - 1]).all()
    assert not doc.is_clean
    doc.redo()
    assert (layer.pixels == shades[doc.history.dropped]).all()


def test_the_newest_step_stays_undoable_even_when_it_alone_exceeds_the_limit():
    doc = Document(64, 64)
    doc.history.limit_bytes = 1000
    doc.fill(doc.layers[0].id, (1, 2, 3, 255))
    assert doc.can_undo and doc.undo() and (doc.layers[0].pixels == 255).all()


def test_a_save_point_marks_clean_only_the_state_that_was_saved():
    doc = Document(16, 16)
    layer = doc.layers[0]
    doc.paint(layer.id, 0, 0, np.zeros((2, 2, 4), np.uint8))
    point = doc.save_point()  # a save of this state starts...
    doc.paint(layer.id, 4, 4, np.zeros((2, 2, 4), np.uint8))  # ...the person keeps painting...
    doc.set_clean(point)  # ...and the save finishes
    assert not doc.is_clean
    doc.undo()
    assert doc.is_clean  # back at what the file holds
    doc.redo()
    doc.undo()
    doc.paint(layer.id, 8, 8, np.zeros((2, 2, 4), np.uint8))  # a different branch
    stale = doc.save_point()
    doc.undo()
    doc.paint(layer.id, 9, 9, np.ones((2, 2, 4), np.uint8))
    doc.set_clean(stale)  # that state can no longer be reached
    assert not doc.is_clean and not doc.history.clean_at
