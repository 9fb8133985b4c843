"""The Sliders panel names the images of a reference folder that could not be used (the engine leaves them
out), where the person chose the folder."""

from __future__ import annotations

import numpy as np
from fake_engine import FakeEngine
from PIL import Image


def test_skipped_reference_images_are_named_under_the_sliders(make_window, qtbot, tmp_path) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    window = make_window(FakeEngine())
    panel = window.slider_panel
    window.session.model.set(engine="patch", model=str(folder))
    qtbot.waitUntil(lambda: not panel.reading_references, timeout=30000)
    assert set(panel.reference_sliders) == {"red", "blue"}
    note = panel.skipped_note
    assert note is not None and note.isVisibleTo(panel)
    assert "1 image in this folder could not be used" in note.text()
    assert "broken.png" in note.text() and "broken.png" in note.toolTip()

    # A folder whose images are all good says nothing more.
    (folder / "broken.png").unlink()
    window.session.model.set(model=str(tmp_path))  # another folder first, so the same one is read again
    window.session.model.set(model=str(folder))
    qtbot.waitUntil(lambda: not panel.reading_references and bool(panel.reference_sliders), timeout=30000)
    assert panel.skipped_note is None
