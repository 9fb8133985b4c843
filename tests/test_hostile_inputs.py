"""Hostile files: projects, OpenRaster files and PNGs that cost more than they hold, lie about what
they hold, or carry numbers that are not numbers (issue 9), and each one the window is given.

Every file is refused (or opened) here and again in a child process under the issue's memory and time
limits (tests/hostile_child.py); every refusal leaves the open document and the file itself untouched and
writes nothing anywhere; every row lands in bench/FAULTS.md (tests/faults.py).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path

import faults
import numpy as np
import pytest
from hostile_child import REFUSAL_BUDGET, REFUSAL_CPU_S, declared_bytes, opening_budget
from hostile_files import COSTLY, bomb_png, good_project, rewrite, setter
from PIL import Image

from backend.request import Request
from studio.document import Document
from studio.files.archive import png_bytes
from studio.files.project import FORMAT_VERSION, ProjectError, load_project, save_project
from studio.gallery import Gallery, Result
from studio.layers import Layer


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


# -------------------------------------------------------------------------------------------- projects


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
    good = good_project(tmp_path / "good.studio")
    cases: dict[str, Path] = {}

    def case(label: str) -> Path:
        cases[label] = tmp_path / "cases" / f"{len(cases)}.studio"
        return cases[label]

    (tmp_path / "cases").mkdir()
    case("not a zip (text)").write_text("I am not a project")
    case("empty file").write_bytes(b"")
    case("truncated zip").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rewrite(good, case("zip without manifest"), drop=("manifest.json",))
    with zipfile.ZipFile(good) as z:
        layer_member = next(n for n in z.namelist() if n.startswith("layers/"))
    rewrite(good, case("zip missing a layer image"), drop=(layer_member,))
    rewrite(good, case("entry named ../escape.txt"), extra=(("../escape.txt", b"x"),))
    rewrite(good, case("entry with an absolute path"), extra=(("/tmp/escape-abs.txt", b"x"),))
    rewrite(good, case("entry with a Windows drive path"), extra=(("C:\\escape.txt", b"x"),))
    rewrite(good, case("manifest: layers is text"), setter("layers", "lots"))
    rewrite(good, case("manifest: width is text"), setter("canvas.width", "24"))
    rewrite(good, case("manifest: opacity is text"), setter("layers.1.opacity", "high"))
    rewrite(good, case("manifest: visible is a number"), setter("layers.0.visible", 1))
    rewrite(good, case("manifest: 100000² canvas"), setter("canvas", {"width": 100000, "height": 100000}))
    rewrite(
        good, case("manifest: canvas smaller than its layers"), setter("canvas", {"width": 8, "height": 8})
    )
    rewrite(good, case("manifest: history of numbers"), setter("prompt_history", [1, 2]))
    rewrite(
        good, case("manifest: recipe of the wrong type"), setter("gallery.0.recipe.request.seed", "seven")
    )
    rewrite(good, case("manifest: layer image path ../x.png"), setter("layers.0.image", "../x.png"))
    rewrite(good, case("manifest: future version"), setter("version", FORMAT_VERSION + 1))
    rewrite(good, case("manifest: version is text"), setter("version", "2"))
    with zipfile.ZipFile(case("manifest is a JSON list"), "w") as z:
        z.writestr("manifest.json", "[1, 2, 3]")
    with zipfile.ZipFile(case("manifest nested 100000 deep"), "w") as z:
        z.writestr("manifest.json", "[" * 100_000 + "]" * 100_000)
    rewrite(good, case("layer PNG is a decompression bomb"), replace={layer_member: bomb_png()})
    many = [{"id": f"l{i}", "name": "big", "image": "big.png"} for i in range(30)]
    rewrite(
        good,
        case("30 layers of 8000² in a few kB (decoded-size bomb)"),
        lambda m: m.update(canvas={"width": 8000, "height": 8000}, layers=many),
        extra=(("big.png", bomb_png(8000, 8000)),),
    )
    rewrite(good, case("manifest listing 100000 layers"), setter("layers", [{"id": "x"}] * 100_000))
    rewrite(good, case("entry declaring 4 GB (zip bomb)"))
    _patch_declared_size(cases["entry declaring 4 GB (zip bomb)"], layer_member, 0xFFFFFFF0)
    rewrite(good, case("damaged entry (bad CRC)"))
    _flip_member_byte(cases["damaged entry (bad CRC)"], "manifest.json")
    with zipfile.ZipFile(case("zip with 20001 entries"), "w") as z:
        for i in range(20_001):
            z.writestr(f"junk/{i}", b"")
    return cases


def test_hostile_project_files_are_refused_and_change_nothing(tmp_path, prober):
    cases = _hostile_projects(tmp_path)
    doc = Document(24, 16)
    doc.paint(doc.layers[0].id, 0, 0, np.full((4, 4, 4), 9, np.uint8))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in cases.values()}
    listing = sorted(str(p) for p in tmp_path.parent.rglob("*"))
    for label, path in cases.items():
        work = faults.snapshot(doc, files=[path])
        with pytest.raises(ProjectError) as err:
            load_project(path)
        lost = faults.bytes_lost(work, faults.snapshot(doc, files=[path]))
        message = str(err.value)
        assert path.name in message and "Traceback" not in message, (label, message)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before[path], f"{label}: file changed"
        cost = prober.open(path, "studio")
        assert (cost.outcome, cost.message) == ("refused", message), (label, cost)  # the same refusal
        outcome = message.replace(f"{path.name}: ", "").replace(path.name, "the file")
        faults.record("project file", label, f"refused: {outcome}", lost, cost)
    assert sorted(str(p) for p in tmp_path.parent.rglob("*")) == listing, "a refused project wrote files"
    assert not Path("/tmp/escape-abs.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert "newer studio" in str(
        pytest.raises(ProjectError, load_project, cases["manifest: future version"]).value
    )


def test_a_project_with_odd_paths_round_trips(tmp_path):
    folder = tmp_path / "mes projets ✓ 作品"
    folder.mkdir()
    doc = Document(24, 16, [Layer("Background", np.full((16, 24, 4), 255, np.uint8), id="bg")])
    path = folder / "a b ümlaut.studio"
    save_project(path, doc, None, ["p"])
    data = load_project(path)
    lost = faults.bytes_lost(faults.snapshot(doc), faults.snapshot(data))
    assert [la.name for la in data.layers] == ["Background"] and data.prompt_history == ["p"]
    faults.record("project file", "unicode and spaces in folder and file name", "saved and opened", lost)


# ------------------------------------------------------------------- files that cost more than they hold


def _open_in_process(path: Path, kind: str) -> str:
    """Open like the window does, in this process; returns what opened, or raises ProjectError."""
    from hostile_child import open_as_window

    return open_as_window(str(path), kind)


@pytest.mark.parametrize("case", COSTLY, ids=[c.label for c in COSTLY])
def test_small_files_that_cost_far_more_than_they_hold(tmp_path, case, prober):
    """Each file is refused (or opened) here and in a child under the issue's limits: a refusal within
    1 GiB and 10 CPU seconds, an opening within max(1 GiB, 1.5x the pixels the file declares)."""
    path = case.make(tmp_path)
    doc = Document(24, 16)
    doc.paint(doc.layers[0].id, 0, 0, np.full((4, 4, 4), 9, np.uint8))
    before = faults.snapshot(doc, files=[path])
    if case.expect == "refused":
        budget = REFUSAL_BUDGET
        with pytest.raises(ProjectError, match=re.escape(case.match)) as err:
            _open_in_process(path, case.kind)
        assert path.name in str(err.value) and err.value.__cause__ is None, err.value
        outcome = "refused: " + str(err.value).replace(f"{path.name}: ", "")
    else:
        budget = opening_budget(declared_bytes(path))
        opened = _open_in_process(path, case.kind)
        assert case.match in opened, opened
        outcome = f"opened: {opened}"
    lost = faults.bytes_lost(before, faults.snapshot(doc, files=[path]))
    cost = prober.open(path, case.kind, budget=budget, cpu_s=REFUSAL_CPU_S)
    # The same answer for the same reason: a refusal for want of memory would mean the limit was hit.
    assert cost.outcome == case.expect and case.match in cost.message, cost
    assert cost.cpu_s <= REFUSAL_CPU_S and cost.vm_peak <= budget, cost
    area = "project file" if case.kind == "studio" else "OpenRaster file"
    faults.record(area, case.label.removeprefix("OpenRaster: "), outcome, lost, cost)


def test_the_cost_limits_let_honest_files_through(tmp_path):
    """Incompressible noise, 16-bit and palette layers and a long honest manifest all open exactly."""
    from hostile_files import ora

    from studio.files.ora import import_ora

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (200, 300, 4), dtype=np.uint8)
    deep = Image.fromarray(rng.integers(0, 65536, (200, 300), dtype=np.uint16))
    palette = Image.fromarray(noise[..., :3]).quantize(256)
    layers = [("data/noise.png", png_bytes(noise, compress_level=9))]
    for image in (deep, palette):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        layers.append((f"data/{image.mode}.png", buf.getvalue()))
    width, height, read = import_ora(ora(tmp_path / "honest.ora", 300, 200, layers))
    assert np.array_equal(read[-1].pixels, noise) and len(read) == 3
    doc = Document(300, 200, [Layer("noise", noise, id="n")])
    gallery = Gallery()
    request = Request(prompt="p " * 900, width=304, height=200)  # a long prompt in every recipe
    for i in range(100):
        gallery.add(Result(noise[..., :3], request, id=f"r{i}", created=float(i)))
    save_project(tmp_path / "honest.studio", doc, gallery, [f"prompt {i}" for i in range(50)])
    data = load_project(tmp_path / "honest.studio")
    assert len(data.results) == 100 and np.array_equal(data.layers[0].pixels, noise)


def test_the_window_survives_every_hostile_file(make_window, qtbot, tmp_path):
    """The window's own open path (drop or File → Open) shows each refusal and changes nothing."""
    from fake_engine import FakeEngine

    window = make_window(FakeEngine(steps=1))
    doc = window.document
    doc.paint(doc.layers[0].id, 0, 0, np.full((4, 4, 4), 9, np.uint8))
    paths = [case.make(tmp_path / str(i)) for i, case in enumerate(COSTLY) if case.expect == "refused"]
    (tmp_path / "more").mkdir()
    paths += list(_hostile_projects(tmp_path / "more").values())
    for path in paths:
        before = faults.snapshot(doc)
        assert window.open_path(str(path)) is False, path
        assert path.name in window.status.message.text() and window.error_box is not None
        assert faults.bytes_lost(before, faults.snapshot(doc)) == 0
    good = good_project(tmp_path / "good after all.studio")
    assert window.open_path(str(good)) and [la.name for la in window.document.layers] == ["Background", "ink"]


# ------------------------------------------------------------------------- numbers that are not numbers


@pytest.mark.parametrize(
    "option, value",
    [("--guidance", "nan"), ("--guidance", "inf"), ("--strength", "nan"), ("--locality", "-inf")],
)
def test_the_cli_refuses_nan_and_infinity(tmp_path, capsys, monkeypatch, option, value):
    from studio.cli.main import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.png"
    code = main(["generate", f"{option}={value}", "--prompt", "x", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid finite number value" in err and not out.exists(), (code, err)
    lost = faults.bytes_lost({}, faults.snapshot(files=tmp_path.iterdir()))
    faults.record(
        "number", f"`studio-cli generate {option} {value}`", f"exit 2: {err.split(': ', 1)[1]}", lost
    )


def _png_with_texts(path: Path, texts: dict[str, str]) -> Path:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in texts.items():
        info.add_itxt(key, text)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(path, pnginfo=info)
    return path


def test_a_recipe_holding_nan_is_not_run_and_info_stays_json(tmp_path, capsys, monkeypatch):
    """`"guidance":NaN` in the studio recipe and `CFG scale: nan` beside it: neither gives a request."""
    from backend import strict_json
    from studio.cli.main import main
    from studio.files.pngmeta import read_png_metadata
    from studio.recipe import recipe_to_json

    text = recipe_to_json(Request(prompt="p", width=16, height=16)).replace(
        '"guidance":7.5', '"guidance":NaN'
    )
    path = _png_with_texts(
        tmp_path / "nan.png",
        {
            "studio:recipe": text,
            "parameters": "p\nSteps: 20, Sampler: Euler, CFG scale: nan, Seed: 1, Size: 16x16",
        },
    )
    before = faults.snapshot(files=[path])
    meta = read_png_metadata(path)
    assert (
        meta.request is None
        and any("NaN" in n for n in meta.notes)
        and any("finite" in n for n in meta.notes)
    )
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--recipe", str(path), "--out", str(tmp_path / "o.png"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "no recipe to re-run" in err and not (tmp_path / "o.png").exists()
    assert main(["info", "--json", str(path)]) == 0
    assert strict_json.loads(capsys.readouterr().out)["request"] is None
    lost = faults.bytes_lost(before, faults.snapshot(files=[path]))
    faults.record(
        "number",
        'PNG recipe with `"guidance":NaN` and `CFG scale: nan`',
        "not re-run: " + err.split(": ", 2)[2].replace(str(path), path.name),
        lost,
    )


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-inf"])
def test_a1111_text_with_a_number_that_is_not_finite_is_refused(value):
    from studio.a1111 import request_from_a1111
    from studio.recipe import RecipeError

    text = f"a fox\nSteps: 20, Sampler: Euler, CFG scale: {value}, Seed: 1, Size: 512x512"
    with pytest.raises(RecipeError, match="not a finite number"):
        request_from_a1111(text)


def test_a_request_with_nan_anywhere_is_invalid():
    from backend.request import Concept, RequestError

    for bad in (
        Request(guidance=float("nan")),
        Request(strength=float("nan")),
        Request(concepts=(Concept("a", "b", float("nan")),)),
        Request(reference_weights=(("r", float("inf")),)),
    ):
        with pytest.raises(RequestError, match="finite"):
            bad.validate()


def _manifest_text(good: Path, dst: Path, text_change) -> Path:
    from hostile_files import members_of, write_zip

    members = members_of(good)
    members["manifest.json"] = text_change(members["manifest.json"].decode()).encode()
    return write_zip(dst, members.items())


@pytest.mark.parametrize(
    "label, old, new",
    [
        ("layer opacity NaN", '"opacity": 0.5', '"opacity": NaN'),
        ("layer opacity 1e400", '"opacity": 0.5', '"opacity": 1e400'),
        ("result time -Infinity", '"created": 1.0', '"created": -Infinity'),
    ],
)
def test_a_project_holding_nan_is_refused(tmp_path, prober, label, old, new):
    good = tmp_path / "good.studio"
    doc = Document(24, 16, [Layer("Background", np.full((16, 24, 4), 255, np.uint8), opacity=0.5, id="bg")])
    gallery = Gallery()
    gallery.add(
        Result(np.zeros((16, 24, 3), np.uint8), Request(prompt="p", width=24, height=16), id="r", created=1.0)
    )
    save_project(good, doc, gallery)
    path = _manifest_text(good, tmp_path / "nan.studio", lambda t: t.replace(old, new))
    assert new in zipfile.ZipFile(path).read("manifest.json").decode()
    work = faults.snapshot(doc, files=[path])
    with pytest.raises(ProjectError, match="finite|not a number JSON allows|too large a number") as err:
        load_project(path)
    lost = faults.bytes_lost(work, faults.snapshot(doc, files=[path]))
    cost = prober.open(path, "studio")
    assert cost.outcome == "refused", cost
    faults.record("number", f".studio {label}", "refused: " + str(err.value).split(": ", 1)[1], lost, cost)


def test_nan_is_never_written_into_a_file(tmp_path):
    """Exports refuse a NaN that got past every check; extras that hold one are written as null."""
    from backend import strict_json
    from studio.files.ora import export_ora
    from studio.files.pngmeta import ExportError, save_png

    doc = Document(8, 8, [Layer("odd", np.zeros((8, 8, 4), np.uint8), opacity=float("nan"))])
    with pytest.raises(ProjectError, match="not a number"):
        export_ora(tmp_path / "x.ora", doc)
    with pytest.raises(ExportError, match="finite"):
        save_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8), Request(guidance=float("nan")))
    assert list(tmp_path.iterdir()) == []
    gallery = Gallery()
    gallery.add(
        Result(
            np.zeros((8, 8, 3), np.uint8), Request(), {"share": float("nan"), "n": np.float32("inf")}, id="r"
        )
    )
    save_project(tmp_path / "p.studio", Document(8, 8), gallery)
    manifest = strict_json.loads(zipfile.ZipFile(tmp_path / "p.studio").read("manifest.json"))
    assert manifest["gallery"][0]["recipe"]["extras"] == {"share": None, "n": None}


def test_json_is_written_and_read_strictly_everywhere():
    """Every JSON the studio writes or reads goes through backend/strict_json.py (no NaN in, none out)."""
    root = Path(__file__).resolve().parents[1]
    # Model configs are diffusers' own files, read and copied as diffusers writes them.
    allowed = {"backend/strict_json.py", "backend/models.py", "backend/controlnets.py", "backend/previews.py"}
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("studio", "backend")
        for path in sorted((root / folder).rglob("*.py"))
        if str(path.relative_to(root)) not in allowed
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bjson\.(dumps|loads|dump|load)\(", line)
    ]
    assert not offenders, offenders


# ------------------------------------------------------------------ text chunks, references, model names


@pytest.mark.parametrize("kind", ["zTXt", "iTXt"])
def test_a_png_with_a_text_chunk_too_large_to_read_opens_without_it(tmp_path, capsys, prober, kind):
    """One compressed text chunk that inflates past 1 MB costs the chunk, not the picture."""
    import zlib

    from hostile_files import chunk

    from backend.images import load_picture
    from studio.cli.main import main
    from studio.files.pngmeta import read_png_metadata

    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = png_bytes(pixels)
    text = zlib.compress(bytes(2 << 20))
    body = b"comment\0\0" + text if kind == "zTXt" else b"comment\0\1\0\0\0" + text
    params = b"parameters\0a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 24x16"
    path = tmp_path / "big comment.png"
    path.write_bytes(png[:33] + chunk(kind.encode(), body) + chunk(b"tEXt", params) + png[33:])
    before = faults.snapshot(files=[path])
    assert np.array_equal(load_picture(path).pixels, pixels)
    meta = read_png_metadata(path)
    assert meta.request is not None and meta.request.seed == 5  # the other chunks still read
    assert any("skipped the text chunk 'comment'" in note for note in meta.notes), meta.notes
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note        skipped the text chunk 'comment'" in out
    lost = faults.bytes_lost(before, faults.snapshot(files=[path]))
    cost = prober.open(path, "png-info")
    assert cost.outcome == "opened" and "skipped" in cost.message, cost
    faults.record(
        "image",
        f"PNG with one {kind} chunk inflating to 2 MB",
        "opened; `info` notes the chunk it skipped",
        lost,
        cost,
    )


def test_one_unreadable_reference_is_skipped_and_named(tmp_path, capsys, monkeypatch):
    from backend.references import load_references
    from studio.cli.main import main
    from studio.files.pngmeta import read_png_metadata

    folder = tmp_path / "refs"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in ("brick", "moss"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = faults.snapshot(files=folder.iterdir())
    refs = load_references(folder)
    assert [r.name for r in refs.references] == ["brick", "moss"]
    assert len(refs.skipped) == 1 and "broken.png" in refs.skipped[0]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.png"
    args = ["generate", "--references", str(folder), "--prompt", "brick", "--steps", "2"]
    code = main([*args, "--width", "32", "--height", "32", "--seed", "1", "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: skipped reference broken.png cannot be used" in err, err
    extras = read_png_metadata(out).extras
    assert len(extras["skipped_references"]) == 1 and "broken.png" in extras["skipped_references"][0]
    faults.record(
        "references",
        "`--references` folder with one unreadable image among two good ones",
        "ran on the two; a warning names broken.png (and the recipe records it)",
        faults.bytes_lost(before, faults.snapshot(files=folder.iterdir())),
    )


def test_models_that_share_a_name_are_listed_apart_and_a_bare_name_is_not_guessed(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from backend.errors import ModelError
    from backend.models import load_model
    from studio.cli.main import main

    (tmp_path / "evil.ckpt").write_bytes(b"\x80\x02}q\x00.")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "evil.safetensors"))
    before = faults.snapshot(files=tmp_path.iterdir())
    assert main(["models", "--model-folder", str(tmp_path), "--no-hub"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(names) == ["evil.ckpt", "evil.safetensors"], names
    with pytest.raises(ModelError, match=r"evil: names 2 models \(evil.ckpt, evil.safetensors\)"):
        load_model("evil", torch.device("cpu"), torch.float32, model_folders=(str(tmp_path),))
    lost = faults.bytes_lost(before, faults.snapshot(files=tmp_path.iterdir()))
    faults.record(
        "model file",
        "`evil.ckpt` beside `evil.safetensors`: `studio-cli models`, then `--model evil`",
        "listed as evil.ckpt and evil.safetensors; the bare name is refused, naming both",
        lost,
    )
