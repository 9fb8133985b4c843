"""`studio-cli generate --batch N / --variations N / --grid X=..;Y=.. --grid-out`: files, recipes, lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import generate, one_clear_line, refs, run  # noqa: F401 - refs is a fixture

from studio.files.pngmeta import read_png_metadata


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_batch_writes_one_file_per_seed_each_with_its_recipe(tmp_path, capsys, refs):  # noqa: F811
    out = tmp_path / "fox.png"
    code, stdout, err = generate(capsys, refs, out, "--seed", "40", "--batch", "3", "--prompt", "stripes")
    assert code == 0, err
    paths = [tmp_path / f"fox-{i}.png" for i in (1, 2, 3)]
    assert stdout.split() == [str(p) for p in paths] and not out.exists()
    metas = [read_png_metadata(p) for p in paths]
    assert [m.request.seed for m in metas] == [40, 41, 42]
    assert all(m.request.grid is None and "Seed: 4" in m.parameters for m in metas)
    assert len({pixels(p).tobytes() for p in paths}) == 3
    # Each cell is its own run: re-running one cell's recipe gives its pixels.
    again = tmp_path / "again.png"
    code, _, err = run(capsys, "generate", "--recipe", paths[1], "--out", again, "-q")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(again), pixels(paths[1]))


def test_grid_writes_a_labelled_png_that_reruns_the_grid(tmp_path, capsys, refs):  # noqa: F811
    sheet = tmp_path / "grid.png"
    code, stdout, err = generate(
        capsys, refs, tmp_path / "cell.png", "--seed", "3", "--grid", "seed=3,4;locality=0.2,0.9",
        "--grid-out", sheet,
    )  # fmt: skip
    assert code == 0, err
    cells = [tmp_path / f"cell-{i}.png" for i in (1, 2, 3, 4)]
    assert stdout.split() == [*map(str, cells), str(sheet)]
    meta = read_png_metadata(sheet)
    assert meta.request.grid is not None and meta.request.grid.shape == (2, 2)
    assert "X Type: Seed" in meta.parameters and "Y Type: Locality" in meta.parameters
    image = pixels(sheet)
    assert image.shape[0] > 64 and image.shape[1] > 64  # two 32² cells each way and the labels
    # The cells sit in the sheet's bottom-right corner, row by row, below and right of the labels.
    h, w = image.shape[:2]
    for k, path in enumerate(cells):
        row, column = divmod(k, 2)
        top, left = h - 64 + row * 32, w - 64 + column * 32
        np.testing.assert_array_equal(image[top : top + 32, left : left + 32], pixels(path))
    assert [read_png_metadata(p).request.locality for p in cells] == [0.2, 0.2, 0.9, 0.9]
    label_band = image[: h - 64]
    assert (label_band < 128).any() and (label_band == 255).mean() > 0.5  # dark text on white
    # Its recipe re-runs the grid: the same sheet, pixel for pixel.
    again = tmp_path / "again.png"
    code, _, err = run(capsys, "generate", "--recipe", sheet, "--grid-out", again, "-q")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(again), image)


def test_variations_keep_the_seed_and_raise_the_strength(tmp_path, capsys, refs):  # noqa: F811
    code, _, err = generate(capsys, refs, tmp_path / "v.png", "--seed", "8", "--variations", "2:0.6")
    assert code == 0, err
    metas = [read_png_metadata(tmp_path / f"v-{i}.png").request for i in (1, 2)]
    assert [(m.seed, m.variation_seed, m.variation_strength) for m in metas] == [(8, 9, 0.3), (8, 9, 0.6)]


@pytest.mark.parametrize(
    ("more", "says"),
    [
        (["--batch", "17"], "2 to 16 cells"),
        (["--batch", "2", "--grid", "seed=1,2"], "choose one of --batch / --grid"),
        (["--grid", "colour=1,2", "--grid-out", "g.png"], "unknown grid axis 'colour'"),
        (["--grid", "cfg=3,90", "--grid-out", "g.png"], "CFG Scale: 90: guidance must be"),
        (["--grid-out", "g.png"], "--grid-out needs --grid"),
        (["--variations", "three"], "--variations should look like"),
    ],
)
def test_bad_grid_options_fail_with_one_clear_line(tmp_path, capsys, refs, more, says):  # noqa: F811
    code, _, err = generate(capsys, refs, tmp_path / "x.png", *more)
    assert code in (1, 2)
    assert says in one_clear_line(err)
    assert not list(tmp_path.glob("*.png"))


def test_diffusers_batch_matches_single_runs(tmp_path, capsys, tiny_sd_folder):
    base = ["generate", "--model", tiny_sd_folder, "--width", "64", "--height", "64", "--steps", "2"]
    code, _, err = run(capsys, *base, "--seed", "5", "--batch", "2", "--out", tmp_path / "b.png", "-q")
    assert code == 0, err
    code, _, err = run(capsys, *base, "--seed", "6", "--out", tmp_path / "single.png", "-q")
    assert code == 0, err
    # batched through the UNet together; within one level of the single run (float rounding of a batch)
    diff = np.abs(pixels(tmp_path / "b-2.png").astype(int) - pixels(tmp_path / "single.png"))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
