"""Hostile and broken input, first round: model files, images and prompts give a clear error or work.

Model files never run a pickle payload; broken images are refused with the file's name, odd ones open
with the right colours; prompts are cleaned and cut with a notice. Every row lands in bench/FAULTS.md,
with the bytes of work lost measured against the state before (tests/faults.py).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import faults
import numpy as np
import pytest
from hostile_files import bomb_png
from PIL import Image

from backend.errors import ImageError, ModelError, StudioError
from backend.images import load_picture
from backend.request import MAX_PROMPT_CHARS, Request
from studio.document import Document
from studio.files.archive import png_bytes
from studio.prompts import clean_prompt


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


# ------------------------------------------------------------------------------------------ model files


class _Payload:
    """Unpickling this runs `exec`, which writes the marker file: the attack a .ckpt can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"weight": _Payload(marker)}}, protocol=2))
    return path, marker


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_a_pickle_checkpoint_never_runs_its_payload(tmp_path, allow_pickle):
    import torch

    from backend.models import load_model

    path, marker = _evil_ckpt(tmp_path)
    before = faults.snapshot(files=tmp_path.iterdir())
    with pytest.raises(ModelError) as err:
        load_model(str(path), torch.device("cpu"), torch.float32, allow_pickle=allow_pickle)
    lost = faults.bytes_lost(before, faults.snapshot(files=tmp_path.iterdir()))
    assert not marker.exists()
    assert "evil.ckpt" in str(err.value)
    how = "opted in (weights-only read)" if allow_pickle else "default"
    faults.record(
        "model file", f"pickle .ckpt with a code payload, {how}", "refused; payload never ran", lost
    )


def test_studio_cli_refuses_a_pickle_checkpoint(tmp_path, capsys, monkeypatch):
    from studio.cli.main import main

    path, marker = _evil_ckpt(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = faults.snapshot(files=tmp_path.iterdir())
    code = main(["generate", "--model", str(path), "--prompt", "x", "--out", str(tmp_path / "o.png"), "-q"])
    lost = faults.bytes_lost(before, faults.snapshot(files=tmp_path.iterdir()))
    err = capsys.readouterr().err
    assert code == 1 and "pickle" in err and not marker.exists() and not (tmp_path / "o.png").exists()
    faults.record(
        "model file",
        "`studio-cli generate --model evil.ckpt`",
        "exit 1 with a message; payload never ran",
        lost,
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_a_broken_safetensors_file_is_a_clear_error(tmp_path, damage):
    import torch
    from safetensors.torch import save_file

    from backend.models import load_model

    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 8 + b"{not json" * 10)
    before = faults.snapshot(files=[path])
    with pytest.raises(ModelError, match="model.safetensors") as err:
        load_model(str(path), torch.device("cpu"), torch.float32)
    lost = faults.bytes_lost(before, faults.snapshot(files=[path]))
    outcome = f"refused: {str(err.value).split(': ', 1)[1]}"
    faults.record("model file", f"{damage} .safetensors", outcome, lost)


# ----------------------------------------------------------------------------------------------- images


def _image_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


_GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))


@pytest.mark.parametrize(
    "name, make",
    [
        ("truncated.png", lambda: _half(png_bytes(np.dstack([_GRADIENT] * 3)))),
        ("truncated.jpg", lambda: _half(_image_bytes(Image.fromarray(np.dstack([_GRADIENT] * 3)), "JPEG"))),
        ("corrupt.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x13" * 200),
        ("corrupt.jpg", lambda: b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x99" * 300),
        ("bomb.png", bomb_png),
        ("not an image.png", lambda: b"hello, I am text"),
        ("empty.png", lambda: b""),
    ],
)
def test_broken_images_are_a_clear_error(tmp_path, name, make, prober):
    path = tmp_path / name
    path.write_bytes(make())
    doc = Document(16, 16)  # the person's canvas, which a refused image must leave alone
    before = faults.snapshot(doc, files=[path])
    with pytest.raises(ImageError) as err:
        load_picture(path)
    lost = faults.bytes_lost(before, faults.snapshot(doc, files=[path]))
    message = str(err.value)
    assert name in message
    cost = prober.open(path, "image")
    assert (cost.outcome, cost.message) == ("refused", message), cost  # the same refusal, within limits
    outcome = "refused: too large" if "large" in message else "refused: not a readable image"
    faults.record("image", name.replace(".", " (", 1) + ")" if " " not in name else name, outcome, lost, cost)


@pytest.mark.parametrize(
    "name, make, check",
    [
        (
            "16-bit grey.png",
            lambda: Image.fromarray((np.arange(64, dtype=np.uint16)[None, :] * 1040).repeat(8, 0)),
            lambda px: px[0, 0, 0] == 0 and abs(int(px[0, 63, 0]) - round(63 * 1040 / 65535 * 255)) <= 1,
        ),
        (
            "palette with transparency.png",
            lambda: _palette(),
            lambda px: tuple(px[0, 0]) == (255, 255, 255) and tuple(px[0, 1]) == (255, 0, 0),
        ),
        (
            "cmyk.jpg",
            lambda: Image.new("CMYK", (16, 8), (0, 255, 255, 0)),
            lambda px: px[..., 0].min() > 200 and px[..., 1].max() < 60,
        ),
        (
            "half alpha.png",
            lambda: Image.new("RGBA", (8, 8), (0, 0, 0, 128)),
            lambda px: abs(int(px[0, 0, 0]) - 127) <= 1,
        ),
        (
            "ünïcødé 名前 with spaces.png",
            lambda: Image.new("RGB", (8, 8), (1, 2, 3)),
            lambda px: px[0, 0, 2] == 3,
        ),
    ],
)
def test_unusual_images_open_correctly(tmp_path, name, make, check, prober):
    folder = tmp_path / "a folder with spaces ✓"
    folder.mkdir()
    path = folder / name
    make().save(path)
    before = faults.snapshot(files=[path])
    picture = load_picture(path)
    lost = faults.bytes_lost(before, faults.snapshot(files=[path]))
    assert picture.pixels.ndim == 3 and picture.pixels.shape[2] == 3
    assert check(picture.pixels)
    cost = prober.open(path, "image")
    assert cost.outcome == "opened", cost
    faults.record("image", name, "opened as RGB with the right colours", lost, cost)


def _palette() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putdata([0, 1])
    image.info["transparency"] = 0
    return image


# --------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    "label, text, expect, notice",
    [
        ("unicode and emoji", "a fox 🦊 — 狐 ✓ Ünïcødé 👩‍🎨", "a fox 🦊 — 狐 ✓ Ünïcødé 👩‍🎨", False),
        ("control characters", "a\x00 fox\x1b[31m\x07\r\nnext\tline\x7f", "a fox[31m\nnext line", True),
        ("lone surrogate", "a fox \ud800 here", "a fox  here", True),
        ("very long (50000 characters)", "fox " * 12_500, ("fox " * 12_500)[:MAX_PROMPT_CHARS], True),
    ],
)
def test_prompts_are_accepted_or_trimmed_with_a_notice(label, text, expect, notice):
    cleaned, message = clean_prompt(text)
    lost = faults.bytes_lost({"prompt": text.encode("utf-8", "surrogatepass")}, {"prompt": cleaned.encode()})
    assert cleaned == expect
    assert (message is not None) == notice
    request = Request(prompt=cleaned, negative_prompt=cleaned).validate()  # never refused after cleaning
    from studio.recipe import recipe_from_json, recipe_to_json

    assert recipe_from_json(recipe_to_json(request)).request == request
    faults.record("prompt", label, message or "accepted unchanged", lost)


def test_an_uncleaned_long_prompt_is_a_readable_error_not_a_crash():
    with pytest.raises(StudioError, match="limit is 2000"):
        Request(prompt="x" * 5000).validate()


def test_the_session_cleans_prompts_where_they_enter(qtbot):
    from fake_engine import FakeEngine

    from studio.session import Session

    session = Session(FakeEngine(), document=Document(32, 32))
    try:
        notices: list[str] = []
        session.model.notice.connect(notices.append)
        typed = "a fox\x00\x1b 🦊" + "x" * 3000
        session.model.set(prompt=typed, negative_prompt="blurry\x07")
        lost = faults.bytes_lost(
            faults.snapshot(prompt=typed), faults.snapshot(prompt=session.model.request.prompt)
        )
        assert (
            session.model.request.prompt.startswith("a fox 🦊")
            and len(session.model.request.prompt) == MAX_PROMPT_CHARS
        )
        assert session.model.request.negative_prompt == "blurry"
        assert len(notices) == 2 and "cut to 2000" in notices[0]
        session.runs.build()[0].validate()  # the cleaned request runs
        faults.record(
            "prompt", "control characters and 3000 characters typed into the session", notices[0], lost
        )
    finally:
        assert session.shutdown(timeout=5)


def test_the_cli_cleans_prompts_and_the_recipe_still_writes(tmp_path, capsys):
    """The CLI's request path cleans the prompt; the cleaned recipe writes and reads back from a PNG."""
    from studio.cli.main import _parser, build_request
    from studio.files.pngmeta import read_png_metadata, save_png

    prompt = "a fox\x1b[31m\x00 🦊 " + "y" * 3000
    args = _parser().parse_args(["generate", "--prompt", prompt, "--width", "32", "--height", "32"])
    request, _ = build_request(args, Request())
    lost = faults.bytes_lost(faults.snapshot(prompt=prompt), faults.snapshot(prompt=request.prompt))
    err = capsys.readouterr().err
    assert "removed 2 control character(s)" in err and "cut to 2000" in err
    out = tmp_path / "fox ✓.png"
    save_png(out, np.zeros((32, 32, 3), np.uint8), request.validate())
    meta = read_png_metadata(out)
    assert meta.request is not None and meta.request.prompt.startswith("a fox[31m 🦊 y")
    assert len(meta.request.prompt) == MAX_PROMPT_CHARS
    faults.record(
        "prompt",
        "`studio-cli generate --prompt` with control characters, 3000 characters",
        "accepted; " + err.split("note: ")[1].strip(),
        lost,
    )
