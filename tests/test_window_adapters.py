"""The window's LoRA sliders, control layers and licences: real widgets on a fake engine (the engine's side
is tested in test_lora.py and test_controlnet.py)."""

from __future__ import annotations

import numpy as np
from fake_engine import FakeEngine

from backend.images import Picture
from backend.request import Control, Lora, Request


def _diffusers(window) -> None:
    window.session.model.set(engine="diffusers", model="tiny-sd")


def test_lora_sliders_are_live_and_tags_typed_in_the_prompt_become_sliders(make_window, qtbot) -> None:
    engine = FakeEngine(steps=1)
    window = make_window(engine)
    model, box = window.session.model, window.slider_panel.lora_box
    assert box.isHidden()  # the patch engine takes no LoRA
    _diffusers(window)
    assert not box.isHidden() and box.empty.isVisible()
    window.prompt_panel.prompt.setPlainText("a red fox <lora:ink:0.8>")
    assert model.request.prompt == "a red fox"
    assert model.request.loras == (Lora("ink", 0.8),)
    assert window.prompt_panel.prompt.toPlainText() == "a red fox"  # the tag became a slider
    assert list(box.sliders) == ["ink"] and box.sliders["ink"].value() == 0.8
    box.add("/loras/wc.safetensors", 0.5)
    assert list(box.sliders) == ["ink", "/loras/wc.safetensors"]

    window.live_action.setChecked(True)
    runs_before = len(engine.started_runs)
    box.sliders["ink"].slider.setValue(750)  # -2..2 over 1000 ticks: 1.0
    assert model.request.loras == (Lora("ink", 1.0), Lora("/loras/wc.safetensors", 0.5))
    qtbot.waitUntil(lambda: len(engine.started_runs) > runs_before and not window.session.runs.running)
    assert engine.started_runs[-1].loras[0].strength == 1.0  # the live run used the new strength

    [remove] = [b for b in box.findChildren(type(box.sliders["ink"].reset)) if b.text() == "✕"][:1]
    remove.click()
    assert [x.name for x in model.request.loras] == ["/loras/wc.safetensors"]


def test_a_layer_becomes_a_control_and_painting_it_updates_the_control(make_window, qtbot) -> None:
    window = make_window(FakeEngine(steps=1))
    _diffusers(window)
    doc, controls, box = window.document, window.session.controls, window.slider_panel.control_box
    assert not box.isHidden() and not box.rows
    sketch = doc.add_layer("sketch")
    doc.set_active(sketch.id)
    box.add_button.click()
    assert len(box.rows) == 1 and box.rows[0].layer.currentData() == sketch.id
    assert window.session.model.request.controls == ()  # no ControlNet chosen yet: out of the request
    assert "Choose a ControlNet" in box.rows[0].problem.text()

    controls.update(0, model="/controlnets/scribble", kind="scribble", strength=0.7, end=0.6)
    [control] = window.session.model.request.controls
    assert (control.model, control.kind, control.strength, control.start, control.end) == (
        "/controlnets/scribble",
        "scribble",
        0.7,
        0.0,
        0.6,
    )
    assert (control.image.pixels == 255).all()  # an empty layer over white
    assert box.rows[0].problem.isHidden()

    doc.fill(sketch.id, (0, 0, 0, 255))  # the person paints on the control layer
    [control] = window.session.model.request.controls
    assert (control.image.pixels == 0).all()
    with qtbot.waitSignal(window.session.runs.result_added, timeout=5000):
        window.generate_action.trigger()
    assert window.session.gallery.results[-1].request.controls == (control,)

    doc.delete_layer(sketch.id)
    assert window.session.model.request.controls == ()
    assert "deleted" in box.rows[0].problem.text()


def test_a_restored_recipe_shows_its_controls_as_fixed_images(make_window) -> None:
    window = make_window(FakeEngine(steps=1))
    image = Picture(np.zeros((64, 64, 3), np.uint8))
    recipe = Request(engine="diffusers", model="m", controls=(Control("/cn", "canny", image, 0.5),))
    window.session.model.show_recipe(recipe)
    box = window.slider_panel.control_box
    assert len(box.rows) == 1 and box.rows[0].layer.currentText() == "(the recipe's image)"
    assert window.session.model.request.controls == recipe.controls
    window.session.controls.update(0, strength=1.5)
    assert window.session.model.request.controls[0].strength == 1.5


def test_the_engine_picker_names_each_models_licence(tmp_path) -> None:
    from tiny_models import save_tiny_sd

    from ui.engine_picker import discovered_models

    model = save_tiny_sd(tmp_path / "models" / "Stable-diffusion" / "tiny")
    (model / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n")
    assert ("tiny (folder, licence creativeml-openrail-m)", str(model)) in discovered_models((str(tmp_path),))


def test_control_rows_show_every_layer_top_first(make_window) -> None:
    window = make_window(FakeEngine(steps=1))
    _diffusers(window)
    doc = window.document
    doc.add_layer("lines")
    window.session.controls.add(doc.layers[0].id)
    combo = window.slider_panel.control_box.rows[0].layer
    assert [combo.itemText(i) for i in range(combo.count())] == ["lines", "Background"]
    combo.setCurrentIndex(0)
    combo.activated.emit(0)
    assert window.session.controls.rows[0].layer == doc.layers[1].id


def test_a_folder_added_in_the_window_is_kept_searched_and_given_to_the_engine(make_window, qtbot, tmp_path):
    from backend.engines import Engines
    from ui.model_folders import add_folder

    install, own = tmp_path / "webui", tmp_path / "my loras"
    (install / "models" / "Lora").mkdir(parents=True)
    (install / "models" / "Lora" / "ink.safetensors").write_bytes(b"x")
    own.mkdir()
    (own / "wc.safetensors").write_bytes(b"x")
    engines = Engines()
    window = make_window(engines)
    session, box = window.session, window.slider_panel.lora_box
    assert add_folder(session, str(install)) == "model" and add_folder(session, str(own)) == "lora"
    assert session.settings.model_folders == [str(install)] and session.settings.lora_folders == [str(own)]
    assert engines.options["model_folders"] == (str(install),)
    assert engines.options["lora_folders"] == (str(own),)
    box.folders = (tuple(session.settings.model_folders), tuple(session.settings.lora_folders))
    box._look()
    qtbot.waitUntil(lambda: box.found is not None)
    assert sorted(name for name, _ in box.found) == ["ink", "wc"]
