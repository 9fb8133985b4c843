"""The headless CLI on the real patch engine at a tiny size: files, events, previews, recipes, lineage."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.images import Picture
from studio.cli.main import main
from studio.files.pngmeta import COMPOSITE, GENERATED, read_png_metadata

ROOT = Path(__file__).resolve().parents[1]
STUDIO_CLI = ROOT / ".venv" / "bin" / "studio-cli"


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    """Three small structured reference images: fast to search, different enough to tell apart."""
    folder = tmp_path_factory.mktemp("refs")
    yy, xx = np.mgrid[0:32, 0:32]
    patterns = {
        "stripes": np.stack([(xx * 16) % 256, yy * 4, 255 - yy * 8], -1),
        "checks": np.stack([((xx // 4 + yy // 4) % 2) * 255, xx * 8, 128 + 0 * xx], -1),
        "rings": np.stack([(np.hypot(xx - 16, yy - 16) * 20) % 256, 60 + 0 * xx, yy * 8], -1),
    }
    for name, pixels in patterns.items():
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.png")
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def generate(capsys, refs: Path, out: Path, *more: str) -> tuple[int, str, str]:
    base = ["generate", "--references", refs, "--width", "32", "--height", "32", "--steps", "2", "--out", out]
    return run(capsys, *base, *more)


def one_clear_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_generate_writes_a_png_with_its_recipe(tmp_path, capsys, refs):
    out = tmp_path / "a.png"
    code, stdout, err = generate(capsys, refs, out, "--seed", "5", "--prompt", "stripes and checks, please")
    assert code == 0, err
    assert stdout.strip() == str(out)
    meta = read_png_metadata(out)
    r = meta.request
    assert (r.engine, r.model, r.seed, r.steps, r.width, r.height) == ("patch", str(refs), 5, 2, 32, 32)
    assert r.prompt == "stripes and checks, please"
    assert set(meta.extras["reference_shares"]) <= {"stripes", "checks", "rings"}
    assert meta.source_type == GENERATED and meta.edited is False
    assert meta.provenance.id == Picture(np.asarray(Image.open(out).convert("RGB"))).digest[:16]
    assert meta.provenance.parents == ()
    assert "Steps: 2" in meta.parameters and "Seed: 5" in meta.parameters
    assert "2/2" in err  # the progress bar went to stderr


def test_events_print_one_json_line_per_step_and_previews_are_saved(tmp_path, capsys, refs):
    previews = tmp_path / "frames"
    code, stdout, err = generate(
        capsys,
        refs,
        tmp_path / "b.png",
        "--steps",
        "3",
        "--seed",
        "1",
        "--events",
        "--preview-dir",
        previews,
        "-q",
    )
    assert code == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert [e["step"] for e in events] == [1, 2, 3]
    assert all(e["total"] == 3 and e["elapsed_ms"] >= 0 for e in events)
    assert [e["elapsed_ms"] for e in events] == sorted(e["elapsed_ms"] for e in events)
    frames = sorted(previews.iterdir())
    assert [f.name for f in frames] == ["step-001.png", "step-002.png", "step-003.png"]
    assert Image.open(frames[-1]).size == (32, 32)
    assert "[" not in err  # --quiet: no bar


def test_recipe_rerun_gives_identical_pixels_and_overrides_apply(tmp_path, capsys, refs):
    first, again, varied = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "varied.png"
    assert generate(capsys, refs, first, "--seed", "11", "--locality", "0.3", "--tile")[0] == 0
    assert run(capsys, "generate", "--recipe", first, "--out", again)[0] == 0
    a, b = np.asarray(Image.open(first)), np.asarray(Image.open(again))
    assert np.array_equal(a, b)
    meta_a, meta_b = read_png_metadata(first), read_png_metadata(again)
    assert meta_b.request == meta_a.request and meta_b.request.tiling and meta_b.request.locality == 0.3
    assert meta_b.provenance == meta_a.provenance  # the same recipe, the same image, the same lineage

    assert (
        run(
            capsys,
            "generate",
            "--recipe",
            first,
            "--variation-seed",
            "3",
            "--variation-strength",
            "0.5",
            "--out",
            varied,
        )[0]
        == 0
    )
    meta_v = read_png_metadata(varied)
    assert meta_v.request == meta_a.request.replace(variation_seed=3, variation_strength=0.5)
    assert meta_v.provenance.parents == (meta_a.provenance.id,)
    assert not np.array_equal(np.asarray(Image.open(varied)), a)


def test_lineage_chain_survives_export_and_reimport(tmp_path, capsys, refs):
    parent, child, grandchild = tmp_path / "parent.png", tmp_path / "child.png", tmp_path / "grand.png"
    assert generate(capsys, refs, parent, "--seed", "2", "--prompt", "rings")[0] == 0
    assert generate(capsys, refs, child, "--seed", "3", "--init-image", parent, "--strength", "0.6")[0] == 0

    # A person paints on the child in another program; the metadata stays, the pixels change.
    with Image.open(child) as im:
        im.load()
        pixels, texts = np.asarray(im).copy(), dict(im.text)
    pixels[:8, :8] = (255, 0, 0)
    info = PngInfo()
    for key, value in texts.items():
        info.add_itxt(key, value)
    Image.fromarray(pixels).save(child, pnginfo=info)

    assert (
        generate(capsys, refs, grandchild, "--seed", "4", "--init-image", child, "--strength", "0.4")[0] == 0
    )
    p, c, g = (read_png_metadata(x) for x in (parent, child, grandchild))
    assert c.provenance.parents == (p.provenance.id,) and not c.provenance.painted
    assert c.request.init_image == Picture(np.asarray(Image.open(parent).convert("RGB")))
    assert c.edited is True
    assert g.provenance.parents == (c.provenance.id,)
    assert g.provenance.painted and g.source_type == COMPOSITE  # painted in between
    assert [a.id for a in g.provenance.chain] == [c.provenance.id, p.provenance.id]
    assert g.provenance.chain[1].recipe["request"]["prompt"] == "rings"

    code, stdout, err = run(capsys, "info", grandchild)
    assert code == 0, err
    assert "chain" in stdout and c.provenance.id in stdout and p.provenance.id in stdout
    assert "Steps: 2" in stdout and "Seed: 4" in stdout and "compositeWithTrainedAlgorithmicMedia" in stdout
    assert '"rings"' in stdout  # the grandparent's recipe, from the chain

    code, stdout, _ = run(capsys, "info", "--json", grandchild)
    data = json.loads(stdout)
    assert data["lineage"]["parents"] == [c.provenance.id] and data["request"]["seed"] == 4


def test_init_image_sets_the_size_and_default_out_name(tmp_path, capsys, refs, monkeypatch):
    init = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(init)
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--references", refs, "--steps", "2", "--seed", "9", "--init-image", init, "-q"]
    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args)[0] == 0  # the default name never overwrites an earlier result
    first, second = tmp_path / "studio-9.png", tmp_path / "studio-9-2.png"
    assert first.is_file() and second.is_file()
    meta = read_png_metadata(first)
    assert (meta.request.width, meta.request.height) == (48, 40)
    assert meta.provenance.parents == (Picture.from_pil(Image.open(init)).digest[:16],)
    assert meta.provenance.chain[0].recipe is None  # a photo from outside: no recipe, still in the chain


def test_attribution_map_is_saved(tmp_path, capsys, refs):
    code, _, err = generate(
        capsys, refs, tmp_path / "c.png", "--seed", "1", "--attribution", tmp_path / "attr.png"
    )
    assert code == 0, err
    sheet = Image.open(tmp_path / "attr.png")
    assert sheet.height == 256 and sheet.width > 256  # the map scaled up to be legible, a legend beside it


def test_info_on_an_image_without_metadata(tmp_path, capsys):
    Image.new("RGB", (16, 16)).save(tmp_path / "plain.png")
    code, stdout, _ = run(capsys, "info", tmp_path / "plain.png")
    assert code == 0 and "none: no generation metadata found" in stdout


def test_models_lists_what_is_in_a_model_folder(tmp_path, capsys):
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "models" / "Stable-diffusion" / "dreamy.safetensors").write_bytes(b"x")
    code, stdout, _ = run(capsys, "models", "--no-hub", "--model-folder", tmp_path)
    assert code == 0 and "dreamy" in stdout


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "required"),
        (["paint"], "invalid choice"),
        (["generate", "--steps", "many"], "invalid int"),
        (["generate", "--seed", "-4"], "--seed"),
        (["generate", "--bogus"], "unrecognized"),
        (["generate", "--width", "33", "--steps", "1", "--out", "{tmp}/x.png"], "multiple of 8"),
        (["generate", "--steps", "500", "--out", "{tmp}/x.png"], "steps"),
        (["generate", "--init-image", "{tmp}/missing.png"], "no such file"),
        (["generate", "--init-image", "{tmp}/text.png"], "not a readable image"),
        (["generate", "--mask", "{tmp}/text.png"], "not a readable image"),
        (["generate", "--recipe", "{tmp}/plain.png"], "no recipe"),
        (["generate", "--references", "{tmp}/nowhere"], "no such folder"),
        (["generate", "--references", "{tmp}/empty", "--steps", "1", "--out", "{tmp}/x.png"], "no images"),
        (
            ["generate", "--model", "{tmp}/nowhere.safetensors", "--steps", "1", "--out", "{tmp}/x.png"],
            "nowhere",
        ),
        (
            ["generate", "--model", "{tmp}/broken.safetensors", "--steps", "1", "--out", "{tmp}/x.png"],
            "broken",
        ),
        (["generate", "--model", "x", "--references", "{tmp}"], "not both"),
        (["generate", "--engine", "diffusers", "--attribution", "{tmp}/a.png"], "patch engine"),
        (["info", "{tmp}/text.png"], "not a readable image"),
        (["info", "{tmp}/missing.png"], "no such file"),
    ],
)
def test_bad_arguments_and_files_fail_with_one_clear_line(tmp_path, capsys, argv, says):
    (tmp_path / "text.png").write_text("this is not a PNG")
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code, stdout, err = run(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code != 0
    line = one_clear_line(err)
    assert line.startswith("studio-cli") and says in line, line
    assert not (tmp_path / "x.png").exists()


def test_real_command_generates(tmp_path, refs):
    """The installed entry point, as a person runs it."""
    out = tmp_path / "real.png"
    argv = [
        "generate",
        "--references",
        refs,
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "2",
        "--seed",
        "6",
    ]
    done = subprocess.run(
        [STUDIO_CLI, *argv, "--out", out, "--events"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2 and "Traceback" not in done.stderr
    assert read_png_metadata(out).request.seed == 6


def test_ctrl_c_exits_130_quietly_and_writes_nothing(tmp_path, capsys, refs, monkeypatch):
    def interrupted(self, step, total, elapsed_s):
        raise KeyboardInterrupt  # what Ctrl+C raises in the main thread mid-run

    monkeypatch.setattr("studio.cli.main.Progress.update", interrupted)
    code, stdout, err = generate(capsys, refs, tmp_path / "never.png", "--seed", "1")
    assert code == 130 and stdout == "" and "Traceback" not in err
    assert not (tmp_path / "never.png").exists()


def test_unwritable_output_fails_with_one_line(tmp_path, capsys, refs):
    (tmp_path / "a file").write_text("not a folder")
    code, _, err = generate(capsys, refs, tmp_path / "a file" / "x.png", "--seed", "1", "-q")
    assert code == 1 and "cannot write" in one_clear_line(err)


def test_diffusers_model_folder_generates_and_reruns(tmp_path, capsys):
    from tiny_models import save_tiny_sd  # tests/ is on sys.path (rootdir-relative import mode)

    model = save_tiny_sd(tmp_path / "tiny-sd")
    first, again = tmp_path / "d1.png", tmp_path / "d2.png"
    argv = ["generate", "--model", model, "--width", "64", "--height", "64", "--steps", "2", "--seed", "8"]
    code, stdout, err = run(
        capsys, *argv, "--prompt", "a tiny test", "--scheduler", "euler_a", "--out", first, "--events"
    )
    assert code == 0, err
    assert len(stdout.splitlines()) == 2
    meta = read_png_metadata(first)
    assert (meta.request.engine, meta.request.model, meta.request.scheduler) == (
        "diffusers",
        str(model),
        "euler_a",
    )
    assert len(meta.extras["model_hash"]) == 64
    assert f"Model hash: {meta.extras['model_hash'][:10]}, Model: tiny-sd" in meta.parameters
    assert "Sampler: Euler a" in meta.parameters

    assert run(capsys, "generate", "--recipe", first, "--out", again, "-q")[0] == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_default_size_follows_the_engine_and_a_recipe_keeps_its_own(tmp_path):
    from backend.request import Request
    from studio.cli.main import _parser, build_request

    patch, _ = build_request(_parser().parse_args(["generate", "--prompt", "brick"]), Request())
    assert (patch.engine, patch.width, patch.height) == ("patch", 256, 256)
    sd, _ = build_request(_parser().parse_args(["generate", "--model", str(tmp_path)]), Request())
    assert (sd.engine, sd.width, sd.height) == ("diffusers", 512, 512)
    recipe = Request(width=96, height=64)
    rerun, _ = build_request(_parser().parse_args(["generate"]), recipe, recipe_given=True)
    assert (rerun.width, rerun.height) == (96, 64)
