"""LoRAs: the engine's image equals the pipeline's after load_lora_weights/set_adapters (kohya and diffusers
keys, SD and SDXL, several at once); a strength change never reloads; files are found, hashed and refused
as A1111 and ComfyUI users expect."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny_sd, build_tiny_sdxl, save_tiny_lora

from backend.diffusers_engine import DiffusersEngine
from backend.errors import ModelError
from backend.events import Done
from backend.loras import autov3_hash, discover_loras
from backend.request import Lora, Request
from backend.schedulers import make_scheduler
from studio.a1111 import parse_a1111, to_a1111

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def sd_loras(tmp_path_factory) -> dict[str, Path]:
    """Two tiny SD LoRAs, one in diffusers' key style and one in kohya's."""
    root = tmp_path_factory.mktemp("loras")
    return {
        "diffusers": save_tiny_lora(build_tiny_sd(), root / "ink.safetensors", seed=1),
        "kohya": save_tiny_lora(build_tiny_sd(), root / "watercolor.safetensors", seed=2, kohya=True),
    }


def _request(*loras: Lora, **changes) -> Request:
    return Request(
        engine="diffusers",
        model="tiny",
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        seed=11,
        steps=4,
        guidance=6.0,
        width=64,
        height=64,
        loras=loras,
    ).replace(**changes)


def _engine(pipe) -> DiffusersEngine:
    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(pipe, "tiny")
    return engine


def _pipeline_image(pipe, r: Request) -> np.ndarray:
    """diffusers' own way: load_lora_weights for each file, then set_adapters with the strengths."""
    for n, lora in enumerate(r.loras):
        pipe.load_lora_weights(lora.name, adapter_name=f"test{n}")
    pipe.set_adapters([f"test{n}" for n in range(len(r.loras))], [lora.strength for lora in r.loras])
    pipe.scheduler = make_scheduler(r.scheduler, pipe.scheduler.config)
    return pipe(
        prompt=r.prompt,
        negative_prompt=r.negative_prompt or None,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        generator=torch.Generator("cpu").manual_seed(r.seed),
        output_type="np",
        height=r.height,
        width=r.width,
    ).images[0]


@pytest.mark.parametrize("style", ["diffusers", "kohya"])
def test_one_lora_equals_the_pipeline(sd_loras, style) -> None:
    engine = _engine(build_tiny_sd())
    r = _request(Lora(str(sd_loras[style]), 0.7))
    ours = engine.render(r)
    theirs = _pipeline_image(build_tiny_sd(), r)  # an identical, separate pipeline
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - engine.render(r.replace(loras=()))).max() > 100 * TOLERANCE


def test_two_loras_equal_the_pipeline(sd_loras) -> None:
    engine = _engine(build_tiny_sd())
    r = _request(
        Lora(str(sd_loras["diffusers"]), 0.5), Lora(str(sd_loras["kohya"]), -0.8), scheduler="euler_a"
    )
    assert np.abs(engine.render(r) - _pipeline_image(build_tiny_sd(), r)).max() <= TOLERANCE


@pytest.mark.parametrize("kohya", [False, True])
def test_sdxl_lora_equals_the_pipeline(tmp_path, kohya) -> None:
    path = save_tiny_lora(build_tiny_sdxl(), tmp_path / "xl.safetensors", kohya=kohya)
    engine = _engine(build_tiny_sdxl())
    r = _request(Lora(str(path), 0.9))
    ours = engine.render(r)
    assert np.abs(ours - _pipeline_image(build_tiny_sdxl(), r)).max() <= TOLERANCE
    assert np.abs(ours - engine.render(r.replace(loras=()))).max() > 100 * TOLERANCE


def test_a_strength_change_reloads_nothing(sd_loras, monkeypatch) -> None:
    pipe = build_tiny_sd()
    engine = _engine(pipe)
    loads: list[object] = []
    real_load = pipe.load_lora_weights

    def counting_load(*args, **kwargs):  # a spy: the real loader still runs
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipe, "load_lora_weights", counting_load)
    plain = engine.render(_request())
    ink = str(sd_loras["diffusers"])
    first = engine.render(_request(Lora(ink, 1.0)))
    model = engine.model
    for strength in (0.5, -0.5, 1.5):
        engine.render(_request(Lora(ink, strength)))
    # Strength 0 and no LoRA at all give the plain image exactly: nothing is left behind.
    np.testing.assert_array_equal(engine.render(_request(Lora(ink, 0.0))), plain)
    np.testing.assert_array_equal(engine.render(_request()), plain)
    np.testing.assert_array_equal(engine.render(_request(Lora(ink, 1.0))), first)
    assert len(loads) == 1 and engine.model is model


def test_loras_are_recorded_with_their_hashes(sd_loras) -> None:
    engine = _engine(build_tiny_sd())
    path = sd_loras["kohya"]
    r = _request(Lora(str(path), 0.75))
    done = list(engine.generate(r, threading.Event()))[-1]
    assert isinstance(done, Done)
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    [entry] = done.extras["loras"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["autov3"] == hashlib.sha256(data[8 + header :]).hexdigest() == autov3_hash(path)
    assert (entry["name"], entry["path"], entry["strength"]) == ("watercolor", str(path), 0.75)
    text = to_a1111(done.request, done.extras)
    assert text.split("\n")[0] == "a lighthouse at dusk <lora:watercolor:0.75>"
    assert parse_a1111(text).fields["Lora hashes"] == f"watercolor: {entry['autov3'][:12]}"


def test_loras_are_found_in_a1111_comfyui_and_settings_folders(sd_loras, tmp_path) -> None:
    a1111 = tmp_path / "webui" / "models" / "Lora" / "styles"
    comfy = tmp_path / "ComfyUI" / "models" / "loras"
    mine = tmp_path / "my loras"
    for folder in (a1111, comfy, mine):
        folder.mkdir(parents=True)
    (a1111 / "ink_style.safetensors").write_bytes(sd_loras["diffusers"].read_bytes())
    (comfy / "old.pt").write_bytes(b"x")
    (mine / "wc.safetensors").write_bytes(sd_loras["kohya"].read_bytes())
    found = discover_loras([str(tmp_path / "webui"), str(tmp_path / "ComfyUI")], [str(mine)])
    assert {(i.name, i.pickle) for i in found} == {("ink_style", False), ("old", True), ("wc", False)}
    engine = DiffusersEngine(
        device="cpu", model_folders=(str(tmp_path / "webui"),), lora_folders=(str(mine),)
    )
    engine.use_pipeline(build_tiny_sd(), "tiny")
    by_name = engine.render(_request(Lora("ink_style", 0.7), Lora("wc.safetensors", 0.4)))
    by_path = engine.render(
        _request(Lora(str(sd_loras["diffusers"]), 0.7), Lora(str(sd_loras["kohya"]), 0.4))
    )
    np.testing.assert_array_equal(by_name, by_path)
    with pytest.raises(ModelError, match="LoRA nope: no such file, and no LoRA of that name"):
        engine.render(_request(Lora("nope")))


def test_bad_lora_files_get_one_line_errors(tmp_path) -> None:
    engine = _engine(build_tiny_sd())
    pickled = tmp_path / "old.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, pickled)
    with pytest.raises(ModelError, match="is a pickle file .* can run code"):
        engine.render(_request(Lora(str(pickled))))
    xl = save_tiny_lora(build_tiny_sdxl(), tmp_path / "xl.safetensors")
    with pytest.raises(
        ModelError, match="is made for text width 80 models, but the loaded model is text width 32"
    ):
        engine.render(_request(Lora(str(xl))))
    unrelated = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(unrelated))
    with pytest.raises(ModelError, match="LoRA") as e:
        engine.render(_request(Lora(str(unrelated))))
    assert "\n" not in str(e.value)
    engine.render(_request())  # the engine still runs


def test_lora_folders_from_the_settings_reach_the_engine(tmp_path) -> None:
    from backend.engines import Engines
    from studio.settings import Settings

    settings = Settings(str(tmp_path / "studio.ini"))
    settings.lora_folders = ["/loras", "/more", "/loras"]
    options = Settings(str(tmp_path / "studio.ini")).engine_options()
    assert options == {"lora_folders": ("/loras", "/more")}
    engine = Engines(**options).get("diffusers")
    assert isinstance(engine, DiffusersEngine) and engine.lora_folders == ("/loras", "/more")
