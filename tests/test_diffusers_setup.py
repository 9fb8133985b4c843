"""Devices, schedulers by name, and the cached model hash."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import DDIMScheduler

from backend.devices import pick_device, pick_dtype
from backend.errors import RequestError, StudioError
from backend.models import CONFIGS, file_sha256, load_model, model_hash
from backend.schedulers import make_scheduler, scheduler_names


def test_devices_pick_and_override() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16  # the CUDA default, whether or not one is here
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(StudioError, match="unknown precision"):
        pick_dtype(torch.device("cpu"), "fp8")
    with pytest.raises(StudioError, match="unknown device"):
        pick_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(StudioError, match="no CUDA GPU"):
            pick_device("cuda")
        assert pick_device(None).type in ("cpu", "mps")


def test_schedulers_by_name_keep_the_models_training_settings() -> None:
    assert {"euler", "euler_a", "ddim", "dpmpp_2m", "lcm"} <= set(scheduler_names())
    v_model = DDIMScheduler.load_config(str(CONFIGS / "sd21" / "scheduler"))
    for name in scheduler_names():
        scheduler = make_scheduler(name, v_model)
        assert scheduler.config.prediction_type == "v_prediction", name  # SD 2.1 predicts v
        assert scheduler.config.beta_schedule == "scaled_linear"
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4
    assert make_scheduler("dpmpp_2m", v_model).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("dpmpp_2m_karras", v_model).config.use_karras_sigmas
    with pytest.raises(RequestError, match="unknown scheduler 'warp'.*euler"):
        make_scheduler("warp", v_model)


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path) -> None:
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"a" * 1000)
    first = file_sha256(weights)
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)  # same size; put the old mtime back: the cached hash answers
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(weights) != first
    # A folder's hash covers every weight file, and changes when one does.
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"x")
    (folder / "model_index.json").write_text("{}")
    before = model_hash(folder)
    (folder / "vae").mkdir()
    (folder / "vae" / "w.safetensors").write_bytes(b"y")
    assert model_hash(folder) != before


def test_models_resolve_by_discovered_name(tmp_path, tiny_sd_folder) -> None:
    loaded = load_model(
        tiny_sd_folder.name, torch.device("cpu"), torch.float32, model_folders=(str(tiny_sd_folder.parent),)
    )
    assert loaded.source == str(tiny_sd_folder) and loaded.family == "sd1"
