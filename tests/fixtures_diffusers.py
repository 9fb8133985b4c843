"""Pytest fixtures with tiny diffusers models (registered from conftest via `pytest_plugins`).

- `tiny_sd_folder`: a saved tiny SD1.x diffusers folder (session-wide; treat it as read-only)
- `tiny_sdxl_folder`: the same for SDXL
- `tiny_engine`: a CPU DiffusersEngine with a fresh tiny SD1.x pipeline under the model name "tiny"
- `tiny_request`: a fast 64×64, 3-step diffusers Request for that engine
- `tiny_configs`: single SD1.x files (.safetensors, .ckpt) load with the tiny model's configs
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SD1.x model saved as a diffusers folder."""
    from tiny_models import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SDXL model saved as a diffusers folder."""
    from tiny_models import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def tiny_engine():
    """A CPU diffusers engine running a fresh tiny SD1.x pipeline named "tiny"."""
    from tiny_models import build_tiny_sd

    from backend.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(device="cpu", dtype="fp32")
    engine.use_pipeline(build_tiny_sd(), "tiny")
    return engine


@pytest.fixture
def tiny_request():
    """A fast request for `tiny_engine`: 64×64, 3 Euler steps, guidance 5."""
    from backend.request import Request

    return Request(
        engine="diffusers",
        model="tiny",
        prompt="a red fox",
        seed=7,
        steps=3,
        guidance=5.0,
        width=64,
        height=64,
    )


@pytest.fixture
def tiny_configs(monkeypatch, tiny_sd_folder):
    """Single SD1.x files load with the tiny model's configs instead of the shipped full-size ones, so a tiny
    checkpoint runs through the engines, the CLI and the window as a real one does."""
    from backend import models

    monkeypatch.setitem(models.CONFIG_FOR_FAMILY, "sd1", str(tiny_sd_folder))
