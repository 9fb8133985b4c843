"""Models offline: folders, single-file checkpoints with local configs, safety, clear errors, discovery."""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from ldm_export import save_ldm_checkpoint, unet_to_ldm, vae_to_ldm
from safetensors.torch import save_file
from tiny_models import build_tiny_sd, build_tiny_sdxl

from backend.diffusers_engine import DiffusersEngine
from backend.engines import Engines
from backend.errors import ModelError
from backend.events import Done
from backend.models import CONFIGS, discover, load_model, model_hash

CPU, F32 = torch.device("cpu"), torch.float32


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on a machine with no network."""

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _render(pipe, request) -> np.ndarray:
    engine = DiffusersEngine(device="cpu")
    engine.use_pipeline(pipe, "tiny")
    return engine.render(request)


def test_single_safetensors_file_loads_offline_with_a_local_config(
    tmp_path, tiny_sd_folder, tiny_request, no_network
) -> None:
    pipe = build_tiny_sd()  # same seed as the saved folder: same weights
    checkpoint = save_ldm_checkpoint(pipe, tmp_path / "tiny-model.safetensors")
    loaded = load_model(str(checkpoint), CPU, F32, config=tiny_sd_folder)
    assert loaded.family == "sd1" and loaded.source == str(checkpoint)
    np.testing.assert_array_equal(_render(loaded.pipe, tiny_request), _render(pipe, tiny_request))
    assert model_hash(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_single_file_sdxl_loads_offline(tmp_path, tiny_sdxl_folder, tiny_request, no_network) -> None:
    """SDXL's layout: CLIP-L under conditioner.embedders.0, OpenCLIP (fused q/k/v) under embedders.1."""
    pipe = build_tiny_sdxl()
    checkpoint = save_ldm_checkpoint(pipe, tmp_path / "tiny-xl.safetensors")
    loaded = load_model(str(checkpoint), CPU, F32, config=tiny_sdxl_folder)
    assert loaded.family == "sdxl"
    np.testing.assert_array_equal(_render(loaded.pipe, tiny_request), _render(pipe, tiny_request))


def test_shipped_configs_parse_offline(no_network) -> None:
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from transformers import CLIPTextConfig, CLIPTokenizer

    reference = json.loads((Path(__file__).parent.parent / "assets" / "latent_rgb.json").read_text())
    assert "sd1" in reference and "sdxl" in reference
    for name, pipeline, width in (
        ("sd15", "StableDiffusionPipeline", 768),
        ("sd21", "StableDiffusionPipeline", 1024),
    ):
        folder = CONFIGS / name
        assert DiffusionPipeline.load_config(str(folder))["_class_name"] == pipeline
        assert UNet2DConditionModel.load_config(str(folder), subfolder="unet")["cross_attention_dim"] == width
        assert CLIPTextConfig.from_pretrained(str(folder / "text_encoder")).hidden_size == width
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    xl = CONFIGS / "sdxl"
    assert DiffusionPipeline.load_config(str(xl))["_class_name"] == "StableDiffusionXLPipeline"
    second = CLIPTokenizer.from_pretrained(str(xl / "tokenizer_2"))
    assert second("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]
    # The LDM export used by the single-file tests round-trips through diffusers' own conversion.
    config = UNet2DConditionModel.load_config(str(CONFIGS / "sd15"), subfolder="unet")
    assert config["block_out_channels"] == [320, 640, 1280, 1280] and config["in_channels"] == 4
    tiny = build_tiny_sd().unet
    converted = convert_ldm_unet_checkpoint(unet_to_ldm(tiny), dict(tiny.config))
    assert set(converted) == set(tiny.state_dict())


def test_checkpoint_with_the_wrong_config_is_named(tmp_path, no_network) -> None:
    checkpoint = save_ldm_checkpoint(build_tiny_sd(), tmp_path / "tiny.safetensors")
    with pytest.raises(
        ModelError, match=r"tiny\.safetensors: does not match the sd15 config.*UNet width is 32"
    ):
        load_model(str(checkpoint), CPU, F32)  # SD1 keys → the shipped sd15 config, which does not fit
    xl_keys = {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(
            514, 32
        ),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
    }
    save_file(xl_keys, str(tmp_path / "xl.safetensors"))
    with pytest.raises(ModelError, match="does not match the sdxl config"):
        load_model(str(tmp_path / "xl.safetensors"), CPU, F32)
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelError, match="no Stable Diffusion UNet weights"):
        load_model(str(tmp_path / "lora.safetensors"), CPU, F32)


class _Payload:
    """A pickle that would run a command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoints_are_refused_and_never_run_code(tmp_path, tiny_sd_folder, tiny_request) -> None:
    state = {**unet_to_ldm(build_tiny_sd().unet)}
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(ModelError, match=r"model\.ckpt: is a pickle checkpoint.*can run code"):
        load_model(str(ckpt), CPU, F32)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ModelError, match="cannot be read safely"):
        load_model(str(evil), CPU, F32, allow_pickle=True)
    assert not marker.exists()
    # Allowed, a real pickle checkpoint loads through weights_only and converts like a .safetensors file.
    pipe = build_tiny_sd()
    full = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        full["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    torch.save({"state_dict": full}, ckpt)
    loaded = load_model(str(ckpt), CPU, F32, allow_pickle=True, config=tiny_sd_folder)
    np.testing.assert_array_equal(_render(loaded.pipe, tiny_request), _render(pipe, tiny_request))


def test_corrupt_and_truncated_files_get_clear_errors(tmp_path, tiny_request) -> None:
    good = save_ldm_checkpoint(build_tiny_sd(), tmp_path / "good.safetensors")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a model\xff" * 100)
    engines = Engines(device="cpu")
    r = tiny_request.replace(model=str(truncated))
    with pytest.raises(ModelError, match=r"truncated\.safetensors: is truncated or corrupt"):
        list(engines.generate(r, threading.Event()))
    with pytest.raises(ModelError, match=r"garbage\.safetensors: is not a valid \.safetensors file"):
        list(engines.generate(r.replace(model=str(garbage)), threading.Event()))


def test_folders_that_are_not_models(tmp_path, tiny_sd_folder, tiny_request) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("hello")
    with pytest.raises(ModelError, match=r"photos: is not a diffusers model folder"):
        load_model(str(tmp_path / "photos"), CPU, F32)
    # A model folder with one shard cut short: the message names the shard.
    import shutil

    broken = Path(shutil.copytree(tiny_sd_folder, tmp_path / "broken"))
    shard = broken / "unet" / "diffusion_pytorch_model.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"unet/diffusion_pytorch_model\.safetensors: is truncated"):
        load_model(str(broken), CPU, F32)
    # Only pickle weights: refused unless allowed.
    pickled = Path(shutil.copytree(tiny_sd_folder, tmp_path / "pickled"))
    for weights in pickled.rglob("*.safetensors"):
        weights.unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="only pickle weights"):
        load_model(str(pickled), CPU, F32)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_model("nobody/no-such-model", CPU, F32)
    # After all that, the engine still runs a good model.
    engines = Engines(device="cpu")
    assert isinstance(
        list(engines.generate(tiny_request.replace(model=str(tiny_sd_folder)), threading.Event()))[-1], Done
    )


def test_discovery_finds_a1111_comfyui_folders_and_the_hub_cache(tmp_path, tiny_sd_folder) -> None:
    a1111 = tmp_path / "stable-diffusion-webui" / "models" / "Stable-diffusion"
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints" / "sdxl"
    a1111.mkdir(parents=True)
    comfy.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(a1111 / "dreamy.safetensors"))
    (a1111 / "old.ckpt").write_bytes(b"x")
    save_file({"x": torch.zeros(1)}, str(comfy / "juggernaut.safetensors"))
    hub = tmp_path / "hub"
    snapshot = hub / "models--someone--tiny-sd" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (hub / "models--someone--tiny-sd" / "refs").mkdir()
    (hub / "models--someone--tiny-sd" / "refs" / "main").write_text("a" * 40)
    (hub / "models--someone--tiny-sd" / "blobs").mkdir()
    found = discover(
        (str(tmp_path / "stable-diffusion-webui"), str(tmp_path / "ComfyUI"), str(tiny_sd_folder)),
        hub_cache=hub,
    )
    by_name = {info.name: info for info in found}
    assert by_name["dreamy"].kind == "file" and not by_name["dreamy"].pickle
    assert by_name["old"].pickle
    assert by_name["juggernaut"].path == str(comfy / "juggernaut.safetensors")
    assert by_name[tiny_sd_folder.name].kind == "folder"
    assert by_name["someone/tiny-sd"].kind == "hub"


def test_single_file_inpainting_checkpoint_gets_a_nine_channel_config(
    tmp_path, tiny_sd_folder, tiny_request
) -> None:
    """A 9-channel checkpoint with an ordinary config folder: the loader widens the UNet's input itself."""
    from backend.images import Picture

    pipe = build_tiny_sd(inpaint=True)
    checkpoint = save_ldm_checkpoint(pipe, tmp_path / "tiny-inpainting.safetensors")
    loaded = load_model(str(checkpoint), CPU, F32, config=tiny_sd_folder)  # tiny_sd_folder's UNet takes 4
    assert loaded.inpaint_unet and type(loaded.pipe).__name__ == "StableDiffusionInpaintPipeline"
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    init = Picture(np.full((64, 64, 3), 128, np.uint8))
    r = tiny_request.replace(init_image=init, mask=Picture(mask), strength=1.0)
    np.testing.assert_allclose(_render(loaded.pipe, r), _render(pipe, r), atol=1e-5)
