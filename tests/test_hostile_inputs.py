"""Hostile and broken input: model files, images, project files and prompts give a clear error or work.

Every refused project file is checked to leave the open document and the file itself untouched, and to
write nothing anywhere; every row lands in bench/FAULTS.md.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import faults
import numpy as np
import pytest
from PIL import Image

from backend.errors import ImageError, ModelError, StudioError
from backend.images import load_picture
from backend.request import MAX_PROMPT_CHARS, Request
from studio.archive import png_bytes
from studio.document import Document, Layer
from studio.gallery import Gallery, Result
from studio.project import FORMAT_VERSION, ProjectError, load_project, save_project
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
    with pytest.raises(ModelError) as err:
        load_model(str(path), torch.device("cpu"), torch.float32, allow_pickle=allow_pickle)
    assert not marker.exists()
    assert "evil.ckpt" in str(err.value)
    how = "opted in (weights-only read)" if allow_pickle else "default"
    faults.record("model file", f"pickle .ckpt with a code payload, {how}", "refused; payload never ran", 0)


def test_studio_cli_refuses_a_pickle_checkpoint(tmp_path, capsys, monkeypatch):
    from studio.cli import main

    path, marker = _evil_ckpt(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["generate", "--model", str(path), "--prompt", "x", "--out", str(tmp_path / "o.png"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "pickle" in err and not marker.exists() and not (tmp_path / "o.png").exists()
    faults.record(
        "model file", "`studio-cli generate --model evil.ckpt`", "exit 1 with a message; payload never ran"
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
    with pytest.raises(ModelError, match="model.safetensors") as err:
        load_model(str(path), torch.device("cpu"), torch.float32)
    faults.record("model file", f"{damage} .safetensors", f"refused: {str(err.value).split(': ', 1)[1]}")


# ----------------------------------------------------------------------------------------------- images


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring an enormous image, with almost no data (nothing big is allocated)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


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
def test_broken_images_are_a_clear_error(tmp_path, name, make):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError) as err:
        load_picture(path)
    message = str(err.value)
    assert name in message
    outcome = "refused: too large" if "large" in message else "refused: not a readable image"
    faults.record("image", name.replace(".", " (", 1) + ")" if " " not in name else name, outcome)


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
def test_unusual_images_open_correctly(tmp_path, name, make, check):
    folder = tmp_path / "a folder with spaces ✓"
    folder.mkdir()
    path = folder / name
    make().save(path)
    picture = load_picture(path)
    assert picture.pixels.ndim == 3 and picture.pixels.shape[2] == 3
    assert check(picture.pixels)
    faults.record("image", name, "opened as RGB with the right colours")


def _palette() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putdata([0, 1])
    image.info["transparency"] = 0
    return image


# -------------------------------------------------------------------------------------------- projects


def _good_project(path: Path) -> Path:
    # Fixed ids keep the refusal messages (and so bench/FAULTS.md) the same from run to run.
    white = np.full((16, 24, 4), 255, np.uint8)
    doc = Document(24, 16, [Layer("Background", white, id="bg"), Layer("ink", white // 2, id="ink")])
    gallery = Gallery()
    request = Request(prompt="p", width=24, height=16)
    gallery.add(Result(np.zeros((16, 24, 3), np.uint8), request, id="r1", created=1.0))
    save_project(path, doc, gallery, ["p"])
    return path


def _rewrite(src: Path, dst: Path, change=None, drop=(), extra=()) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    if change:
        change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            if name not in drop:
                z.writestr(name, data)
        for name, data in extra:
            z.writestr(name, data)
    return dst


def _set(path: str, value):
    def change(m):
        node = m
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _patch_declared_size(path: Path, member: str, size: int) -> None:
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02" + b"", 0)
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len].decode() == member:
            struct.pack_into("<I", data, pos + 24, size)
        pos = data.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(data))


def _flip_member_byte(path: Path, member: str) -> None:
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _hostile_projects(tmp_path: Path) -> dict[str, Path]:
    good = _good_project(tmp_path / "good.studio")
    cases: dict[str, Path] = {}

    def case(label: str) -> Path:
        cases[label] = tmp_path / "cases" / f"{len(cases)}.studio"
        return cases[label]

    (tmp_path / "cases").mkdir()
    case("not a zip (text)").write_text("I am not a project")
    case("empty file").write_bytes(b"")
    case("truncated zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _rewrite(good, case("zip without manifest"), drop=("manifest.json",))
    with zipfile.ZipFile(good) as z:
        layer_member = next(n for n in z.namelist() if n.startswith("layers/"))
    _rewrite(good, case("zip missing a layer image"), drop=(layer_member,))
    _rewrite(good, case("entry named ../escape.txt"), extra=(("../escape.txt", b"x"),))
    _rewrite(good, case("entry with an absolute path"), extra=(("/tmp/escape-abs.txt", b"x"),))
    _rewrite(good, case("entry with a Windows drive path"), extra=(("C:\\escape.txt", b"x"),))
    _rewrite(good, case("manifest: layers is text"), _set("layers", "lots"))
    _rewrite(good, case("manifest: width is text"), _set("canvas.width", "24"))
    _rewrite(good, case("manifest: opacity is text"), _set("layers.1.opacity", "high"))
    _rewrite(good, case("manifest: visible is a number"), _set("layers.0.visible", 1))
    _rewrite(good, case("manifest: 100000² canvas"), _set("canvas", {"width": 100000, "height": 100000}))
    _rewrite(
        good, case("manifest: canvas smaller than its layers"), _set("canvas", {"width": 8, "height": 8})
    )
    _rewrite(good, case("manifest: history of numbers"), _set("prompt_history", [1, 2]))
    _rewrite(good, case("manifest: recipe of the wrong type"), _set("gallery.0.recipe.request.seed", "seven"))
    _rewrite(good, case("manifest: layer image path ../x.png"), _set("layers.0.image", "../x.png"))
    _rewrite(good, case("manifest: future version"), _set("version", FORMAT_VERSION + 1))
    _rewrite(good, case("manifest: version is text"), _set("version", "2"))
    with zipfile.ZipFile(case("manifest is a JSON list"), "w") as z:
        z.writestr("manifest.json", "[1, 2, 3]")
    with zipfile.ZipFile(case("manifest nested 100000 deep"), "w") as z:
        z.writestr("manifest.json", "[" * 100_000 + "]" * 100_000)
    _rewrite(good, case("layer PNG is a decompression bomb"), extra=())
    with zipfile.ZipFile(cases["layer PNG is a decompression bomb"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[layer_member] = bomb_png()
    with zipfile.ZipFile(cases["layer PNG is a decompression bomb"], "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    many = [{"id": f"l{i}", "name": "big", "image": "big.png"} for i in range(30)]
    _rewrite(
        good,
        case("30 layers of 8000² in a few kB (decoded-size bomb)"),
        lambda m: m.update(canvas={"width": 8000, "height": 8000}, layers=many),
        extra=(("big.png", bomb_png(8000, 8000)),),
    )
    _rewrite(good, case("manifest listing 100000 layers"), _set("layers", [{"id": "x"}] * 100_000))
    _rewrite(good, case("entry declaring 4 GB (zip bomb)"))
    _patch_declared_size(cases["entry declaring 4 GB (zip bomb)"], layer_member, 0xFFFFFFF0)
    _rewrite(good, case("damaged entry (bad CRC)"))
    _flip_member_byte(cases["damaged entry (bad CRC)"], "manifest.json")
    with zipfile.ZipFile(case("zip with 20001 entries"), "w") as z:
        for i in range(20_001):
            z.writestr(f"junk/{i}", b"")
    return cases


def test_hostile_project_files_are_refused_and_change_nothing(tmp_path):
    cases = _hostile_projects(tmp_path)
    doc = Document(24, 16)
    doc.paint(doc.layers[0].id, 0, 0, np.full((4, 4, 4), 9, np.uint8))
    work = doc.layers[0].pixels.copy()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in cases.values()}
    listing = sorted(str(p) for p in tmp_path.parent.rglob("*"))
    for label, path in cases.items():
        with pytest.raises(ProjectError) as err:
            load_project(path)
        message = str(err.value)
        assert path.name in message and "Traceback" not in message, (label, message)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before[path], f"{label}: file changed"
        lost = int((doc.layers[0].pixels != work).sum())
        outcome = message.replace(f"{path.name}: ", "").replace(path.name, "the file")
        faults.record("project file", label, f"refused: {outcome}", lost)
    assert sorted(str(p) for p in tmp_path.parent.rglob("*")) == listing, "a refused project wrote files"
    assert not Path("/tmp/escape-abs.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert "newer studio" in str(
        pytest.raises(ProjectError, load_project, cases["manifest: future version"]).value
    )


def test_a_project_with_odd_paths_round_trips(tmp_path):
    folder = tmp_path / "mes projets ✓ 作品"
    folder.mkdir()
    path = _good_project(folder / "a b ümlaut.studio")
    data = load_project(path)
    assert [la.name for la in data.layers] == ["Background", "ink"] and data.prompt_history == ["p"]
    faults.record("project file", "unicode and spaces in folder and file name", "saved and opened")


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
    assert cleaned == expect
    assert (message is not None) == notice
    request = Request(prompt=cleaned, negative_prompt=cleaned).validate()  # never refused after cleaning
    from studio.recipe import recipe_from_json, recipe_to_json

    assert recipe_from_json(recipe_to_json(request)).request == request
    faults.record("prompt", label, message or "accepted unchanged")


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
        session.model.set(prompt="a fox\x00\x1b 🦊" + "x" * 3000, negative_prompt="blurry\x07")
        assert (
            session.model.request.prompt.startswith("a fox 🦊")
            and len(session.model.request.prompt) == MAX_PROMPT_CHARS
        )
        assert session.model.request.negative_prompt == "blurry"
        assert len(notices) == 2 and "cut to 2000" in notices[0]
        session.runs.build()[0].validate()  # the cleaned request runs
        faults.record("prompt", "control characters and 3000 characters typed into the session", notices[0])
    finally:
        assert session.shutdown(timeout=5)


def test_the_cli_cleans_prompts_and_the_recipe_still_writes(tmp_path, capsys):
    """The CLI's request path cleans the prompt; the cleaned recipe writes and reads back from a PNG."""
    from studio.cli import _parser, build_request
    from studio.pngmeta import read_png_metadata, save_png

    prompt = "a fox\x1b[31m\x00 🦊 " + "y" * 3000
    args = _parser().parse_args(["generate", "--prompt", prompt, "--width", "32", "--height", "32"])
    request, _ = build_request(args, Request())
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
    )
