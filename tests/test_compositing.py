"""Compositing: integer blends in bands match float arithmetic, honour offsets, and stay incremental."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from studio.compositing import Compositor, composite
from studio.document import Document
from studio.layers import Layer


def float_composite(layers: list[Layer], width: int, height: int) -> np.ndarray:
    """The reference: straight-alpha "over" in float64 on canvas-size copies of every layer."""
    out = np.full((height, width, 3), 255.0)
    for layer in layers:
        if not layer.visible:
            continue
        px = layer.full(width, height).astype(np.float64)
        alpha = px[..., 3:4] / 255.0 * round(layer.opacity * 255) / 255.0
        out = px[..., :3] * alpha + out * (1 - alpha)
    return out


def random_layers(rng: np.random.Generator, width: int, height: int) -> list[Layer]:
    layers = [Layer("bg", np.full((height, width, 4), 255, np.uint8))]
    for i in range(4):
        h, w = int(rng.integers(1, height)), int(rng.integers(1, width))
        x, y = int(rng.integers(-w // 2, width)), int(rng.integers(-h // 2, height))
        px = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        layers.append(Layer(f"l{i}", px, opacity=float(rng.uniform(0.2, 1.0)), x=x, y=y))
    return layers


def test_integer_banded_composite_matches_float_blending_within_one_level_per_layer():
    rng = np.random.default_rng(1)
    for _ in range(5):
        layers = random_layers(rng, 97, 61)
        ours = composite(layers, 97, 61).astype(np.float64)
        assert np.abs(ours - float_composite(layers, 97, 61)).max() <= len(layers)


def test_layers_keep_their_own_size_at_their_offset():
    dot = np.zeros((2, 3, 4), np.uint8)
    dot[...] = (0, 0, 255, 255)
    layer = Layer("dot", dot, x=5, y=4)
    out = composite([layer], 10, 8)
    assert (out[4:6, 5:8] == (0, 0, 255)).all()
    out[4:6, 5:8] = 255
    assert (out == 255).all()  # nothing anywhere else
    # Partly off the canvas: only the part inside shows.
    edge = composite([Layer("edge", dot, x=-2, y=7)], 10, 8)
    assert (edge[7, 0] == (0, 0, 255)).all() and (edge[7, 1:] == 255).all() and (edge[:7] == 255).all()


def test_compositing_a_large_canvas_allocates_the_picture_and_one_band_not_a_float_copy():
    side = 2048
    layers = [Layer(f"l{i}", np.full((side, side, 4), (i * 40, 90, 200, 128), np.uint8)) for i in range(3)]
    tracemalloc.start()
    try:
        out = composite(layers, side, side)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    picture = side * side * 3
    assert out.shape == (side, side, 3)
    # A float32 copy of the canvas alone would be 4× the picture; one band of scratch is a few MB.
    assert peak < picture + 16 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {picture / 2**20:.0f} MiB picture"


def test_painting_beyond_a_small_layer_grows_it_and_undo_restores_the_pixels():
    doc = Document(32, 32)
    dot = np.full((2, 2, 4), 255, np.uint8)
    doc.add_layer("dot", dot)
    layer = doc.active
    assert layer is not None and layer.bounds == (0, 0, 2, 2)
    patch = np.zeros((3, 3, 4), np.uint8)
    patch[...] = (10, 20, 30, 255)
    doc.paint(layer.id, 20, 25, patch)
    assert layer.bounds == (0, 0, 23, 28)
    assert (layer.region(20, 25, 3, 3) == (10, 20, 30, 255)).all()
    before = doc.composite()
    doc.undo()
    assert (layer.region(20, 25, 3, 3) == 0).all() and (layer.region(0, 0, 2, 2) == 255).all()
    doc.redo()
    assert np.array_equal(doc.composite(), before)


def test_copies_share_pixels_until_one_writes():
    doc = Document(16, 16)
    layer = doc.layers[0]
    copy = layer.copy()
    assert copy.pixels is layer.pixels and not layer.pixels.flags.writeable
    doc.paint(layer.id, 0, 0, np.zeros((4, 4, 4), np.uint8))
    assert copy.pixels is not layer.pixels
    assert (copy.pixels == 255).all() and (layer.pixels[:4, :4] == 0).all()


@pytest.mark.parametrize("pivot", [1, 3])
def test_compositor_reblends_only_from_the_active_layer_up_and_matches_a_full_composite(pivot):
    rng = np.random.default_rng(2)
    layers = random_layers(rng, 64, 48)
    comp = Compositor()
    comp.update(layers, 64, 48, pivot)
    assert np.array_equal(comp.rgb, composite(layers, 64, 48))
    # Changing the pivot layer again and again: the first change builds the cache below it...
    for step in range(4):
        layers[pivot].opacity = 0.3 + 0.1 * step
        before = comp.blends
        comp.update(layers, 64, 48, pivot)
        assert np.array_equal(comp.rgb, composite(layers, 64, 48))
        if step > 0:  # ...and later ones blend only the layers from the pivot up
            assert comp.blends - before == len(layers) - pivot
    # A change below the pivot recomposites everything, still exactly.
    layers[0].visible = False
    comp.update(layers, 64, 48, pivot)
    assert np.array_equal(comp.rgb, composite(layers, 64, 48))


def test_compositor_region_with_a_stroke_in_progress_matches_the_committed_result():
    rng = np.random.default_rng(3)
    layers = random_layers(rng, 40, 30)
    comp = Compositor()
    comp.update(layers, 40, 30, 2)
    layers[2].opacity = 0.9
    comp.update(layers, 40, 30, 2)  # the cache below layer 2 exists now
    rect = (5, 6, 20, 10)
    stroke = layers[2].region(*rect).copy()
    stroke[..., :] = (250, 10, 10, 200)
    comp.update_region(layers, rect, replace=(layers[2].id, stroke))
    layers[2].place(5, 6, stroke)
    assert np.array_equal(comp.rgb, composite(layers, 40, 30))


def test_composite_of_reads_the_caches_and_equals_a_full_composite():
    rng = np.random.default_rng(4)
    layers = random_layers(rng, 64, 48)
    comp = Compositor()
    comp.update(layers, 64, 48, 2)
    layers[3].opacity = 0.5  # a change above the pivot: the layers below it are cached
    comp.update(layers, 64, 48, 2)
    picture = comp.pixels.copy()
    for chosen in (layers, layers[:2], layers[:4], layers[1:], [layers[0], layers[4]]):
        out = comp.composite_of(chosen, 64, 48)
        assert np.array_equal(out, composite(chosen, 64, 48))
        assert out.base is None or out.base is not comp.pixels  # a copy the caller may keep
    assert np.array_equal(comp.pixels, picture)  # reading never changes what the canvas shows
    assert comp.composite_of(layers[:2], 32, 48).shape == (48, 32, 3)  # another size: blended afresh
