"""Models → Allow pickle model files: asks before turning on, is kept in the settings, lists pickle models,
ControlNets and LoRAs (marked), and the running engines load them from the next run without a restart."""

from __future__ import annotations

import pytest
import torch
from ldm_export import save_ldm_checkpoint
from PySide6.QtWidgets import QMessageBox
from tiny_models import build_tiny_sd

from backend.engines import Engines
from studio.settings import Settings


@pytest.fixture
def install(tmp_path):
    """An A1111 install holding a tiny .ckpt model, a pickle LoRA and a pickle ControlNet."""
    root = tmp_path / "a1111"
    models = root / "models"
    for sub in ("Stable-diffusion", "Lora", "ControlNet"):
        (models / sub).mkdir(parents=True)
    save_ldm_checkpoint(build_tiny_sd(), models / "Stable-diffusion" / "oldie.ckpt")
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, models / "Lora" / "ink.pt")
    torch.save({"input_hint_block.0.weight": torch.zeros(1)}, models / "ControlNet" / "control_canny.pth")
    return root


class Answers:
    """QMessageBox.exec answering as the test says, and remembering what each box said."""

    def __init__(self, monkeypatch) -> None:
        self.answer: QMessageBox.StandardButton | None = None  # None: no box may open
        self.asked: list[str] = []
        answers = self

        def exec_(box: QMessageBox) -> int:
            answers.asked.append(f"{box.text()}\n{box.informativeText()}")
            assert answers.answer is not None, "no question was expected"
            return answers.answer

        monkeypatch.setattr(QMessageBox, "exec", exec_)


def _discovered(window, qtbot) -> dict[str, str]:
    picker = window.engine_picker
    qtbot.waitUntil(lambda: not picker.searching, timeout=30000)
    return {picker.itemData(i): picker.itemText(i) for i in range(picker.count())}


def test_allowing_pickles_lists_them_and_the_next_run_loads_them(
    make_window, qtbot, monkeypatch, install, tmp_path, tiny_configs
) -> None:
    answers = Answers(monkeypatch)
    engines = Engines(device="cpu")
    window = make_window(engines, size=64)
    window.settings.model_folders = [str(install)]
    options = window.model_options
    action = options.allow_pickle_action
    ckpt = str(install / "models" / "Stable-diffusion" / "oldie.ckpt")
    key = f"diffusers|{ckpt}"
    assert action.text() == "Allow pickle model files (.ckpt, .pt, .bin)…" and not action.isChecked()
    assert action in options.menu.actions() and options.menu.title() == "&Models"
    window.engine_picker.start_discovery()
    assert key not in _discovered(window, qtbot)

    # Turning it on asks first; cancelling changes nothing.
    answers.answer = QMessageBox.StandardButton.Cancel
    action.trigger()
    assert not action.isChecked() and not window.settings.allow_pickle
    assert not engines.options.get("allow_pickle")
    assert "can carry code" in answers.asked[0] and "weights-only loader" in answers.asked[0]
    assert ".safetensors file holds only numbers and is safer" in answers.asked[0]

    answers.answer = QMessageBox.StandardButton.Yes
    action.trigger()
    assert action.isChecked() and engines.options["allow_pickle"] is True
    assert Settings(str(tmp_path / "settings.ini")).allow_pickle  # kept for the next start
    found = _discovered(window, qtbot)
    assert key in found and "pickle" in found[key]
    loras, controlnets = window.slider_panel.lora_box, window.slider_panel.control_box
    qtbot.waitUntil(lambda: loras.found is not None and controlnets.found is not None, timeout=30000)
    assert ("ink (pickle)", str(install / "models" / "Lora" / "ink.pt")) in (loras.found or [])
    assert ("control_canny (pickle)", str(install / "models" / "ControlNet" / "control_canny.pth")) in (
        controlnets.found or []
    )

    # Chosen in the picker, a run on it succeeds without a restart.
    picker = window.engine_picker
    picker.setCurrentIndex(picker.findData(key))
    picker.activated.emit(picker.currentIndex())
    assert window.session.model.request.model == ckpt
    window.session.model.set(prompt="a brass buckle", steps=2, seed=4)
    with qtbot.waitSignal(window.session.runs.result_added, timeout=120000) as added:
        window.generate_action.trigger()
    assert added.args[0].request.model == ckpt

    # Turning it off asks nothing, hides the model again, and the loaded model is not used any more.
    answers.answer = None
    action.trigger()
    assert not action.isChecked() and not window.settings.allow_pickle
    _discovered(window, qtbot)
    assert all(path != ckpt for _, path in picker.models)  # (the picker still names the request's model)
    qtbot.waitUntil(lambda: loras.found is not None, timeout=30000)
    assert all("pickle" not in name for name, _ in loras.found or [])
    with qtbot.waitSignal(window.session.runs.error, timeout=60000) as failed:
        window.generate_action.trigger()
    assert "oldie.ckpt: is a pickle checkpoint" in failed.args[0]
    assert "Models → Allow pickle model files" in failed.args[0]
    assert len(answers.asked) == 2
