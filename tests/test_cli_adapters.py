"""The command line's ControlNets, LoRAs and licences: --controlnet/--control, --lora and <lora:> tags, the
recipe and A1111 text they write, `info` and `models`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_models import build_tiny_controlnet, build_tiny_sd, save_tiny_lora, save_tiny_sd

from backend.licences import model_licence
from backend.models import discover
from studio.cli.adapters import _peel_numbers
from studio.cli.main import main
from studio.files.pngmeta import read_png_metadata


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model with a card, a ControlNet folder, an A1111 install with a LoRA, a LoRA file, a sketch."""
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_sd(root / "tiny-sd")
    (model / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags: [test]\n---\n# tiny\n")
    controlnet = root / "tiny-controlnet"
    build_tiny_controlnet(build_tiny_sd().unet, 1).save_pretrained(controlnet)
    webui = root / "webui"
    save_tiny_lora(build_tiny_sd(), webui / "models" / "Lora" / "wc.safetensors", seed=2, kohya=True)
    ink = save_tiny_lora(build_tiny_sd(), root / "ink.safetensors", seed=1)
    sketch = np.full((64, 64, 3), 255, np.uint8)
    sketch[20:44, 30:33] = 0
    Image.fromarray(sketch).save(root / "sketch.png")
    return {"root": root, "model": model, "controlnet": controlnet, "webui": webui, "ink": ink}


def test_controlnet_lora_and_weighted_prompt_from_the_command_line(setup, tmp_path, capsys) -> None:
    s = setup
    out, again = tmp_path / "a.png", tmp_path / "b.png"
    code, _, err = run(
        capsys,
        "generate",
        "--model", s["model"],
        "--model-folder", s["webui"],
        "--width", "64", "--height", "64", "--steps", "3", "--seed", "4", "-q",
        "--prompt", "a (red:1.3) [fox:cat:0.5] <lora:wc:0.4>",
        "--controlnet", s["controlnet"],
        "--control", f"canny:{s['root'] / 'sketch.png'}:0.8:0.1:0.9",
        "--lora", f"{s['ink']}:0.6",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    meta = read_png_metadata(out)
    r = meta.request
    assert r.prompt == "a (red:1.3) [fox:cat:0.5]"
    assert [(x.name, x.strength) for x in r.loras] == [("wc", 0.4), (str(s["ink"]), 0.6)]
    [control] = r.controls
    assert (control.model, control.kind, control.strength, control.start, control.end) == (
        str(s["controlnet"]),
        "canny",
        0.8,
        0.1,
        0.9,
    )
    assert control.image.width == 64 and control.image.pixels[30, 31].tolist() == [0, 0, 0]
    # The JSON recipe names each LoRA file and its SHA-256; the A1111 text: tags, hashes, the ControlNet.
    wc, ink = meta.extras["loras"]
    assert wc["path"] == str(s["webui"] / "models" / "Lora" / "wc.safetensors") and len(wc["sha256"]) == 64
    assert ink["path"] == str(s["ink"])
    first = meta.parameters.split("\n")[0]
    assert first == "a (red:1.3) [fox:cat:0.5] <lora:wc:0.4> <lora:ink:0.6>"
    assert f'Lora hashes: "wc: {wc["autov3"][:12]}, ink: {ink["autov3"][:12]}"' in meta.parameters
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet [' in meta.parameters
    assert meta.extras["licence"] == "creativeml-openrail-m"
    code, info, _ = run(capsys, "info", out)
    assert "licence     creativeml-openrail-m" in info.splitlines()
    # The recipe re-runs to the same pixels (the LoRA is found again by its name in the A1111 install).
    code, _, err = run(
        capsys, "generate", "--recipe", out, "--model-folder", s["webui"], "--out", again, "-q"
    )
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


@pytest.mark.parametrize(
    ("more", "says"),
    [
        (["--controlnet", "x"], "one --controlnet per --control"),
        (["--controlnet", "x", "--control", "hed:img.png"], "unknown kind 'hed'"),
        (["--controlnet", "x", "--control", "canny"], "expected KIND:IMAGE"),
        (["--prompt", "a <lora:x:strong>"], "should be a number"),
        (["--lora", "a", "--lora", "a:0.5"], "named twice"),
    ],
)
def test_bad_control_and_lora_options_fail_with_one_line(setup, capsys, more, says) -> None:
    code, _, err = run(capsys, "generate", "--model", setup["model"], *more)
    assert code == 2 and says in one_line(err)


def test_loras_need_the_diffusers_engine(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "generate", "--references", tmp_path, "--lora", "ink")
    assert code == 2 and "need the diffusers engine" in one_line(err)


def test_numbers_are_peeled_from_the_right() -> None:
    assert _peel_numbers("C:/sketches/a:b.png:0.5:0:0.8", (3, 1)) == ("C:/sketches/a:b.png", [0.5, 0.0, 0.8])
    assert _peel_numbers("sketch.png:0.5", (3, 1)) == ("sketch.png", [0.5])
    assert _peel_numbers("sketch.png", (3, 1)) == ("sketch.png", [])


def test_models_lists_controlnets_loras_and_licences(setup, tmp_path, capsys) -> None:
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    save_file(
        {"x": torch.zeros(1)},
        str(checkpoints / "dreamy.safetensors"),
        metadata={"modelspec.license": "openrail++"},
    )
    (tmp_path / "models" / "Lora").mkdir()
    (tmp_path / "models" / "Lora" / "ink.safetensors").write_bytes(setup["ink"].read_bytes())
    (tmp_path / "models" / "ControlNet").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "models" / "ControlNet" / "control_canny.safetensors"))
    code, out, _ = run(capsys, "models", "--no-hub", "--model-folder", tmp_path)
    assert code == 0 and out.splitlines() == [
        f"dreamy  file    {checkpoints / 'dreamy.safetensors'}  licence: openrail++"
    ]  # the LoRA and the ControlNet are not checkpoints
    code, out, _ = run(capsys, "models", "--no-hub", "--model-folder", tmp_path, "--loras")
    assert out.split() == ["ink", "file", str(tmp_path / "models" / "Lora" / "ink.safetensors")]
    code, out, _ = run(capsys, "models", "--no-hub", "--model-folder", tmp_path, "--controlnets")
    assert out.split()[0] == "control_canny"


def test_licences_come_from_headers_and_model_cards(setup, tmp_path) -> None:
    assert model_licence(setup["model"]) == "creativeml-openrail-m"
    card = tmp_path / "other"
    card.mkdir()
    (card / "README.md").write_text("---\nlicense: other\nlicense_name: stabilityai-ai-community\n---\n")
    assert model_licence(card) == "stabilityai-ai-community"
    (card / "README.md").write_text("no front matter at all")
    assert model_licence(card) == ""
    assert model_licence(tmp_path / "missing.safetensors") == ""
    assert [m.licence for m in discover((str(setup["model"]),), include_hub=False)] == [
        "creativeml-openrail-m"
    ]
