"""Reference folders: loading, tags, prompt selection, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from backend.errors import ReferencesError, StudioError
from backend.patch_engine import PatchEngine
from backend.references import DEFAULT_FOLDER, fit, load_references, log_priors, match_prompt, select
from backend.request import Request


def save(folder, name, mode="RGB", size=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    image = rgb.convert(mode) if mode not in ("I;16",) else rgb.convert("L").convert("I;16")
    image.save(folder / name)
    return folder / name


def test_shipped_references_have_sources_and_licences():
    refs = load_references(DEFAULT_FOLDER)
    assert 16 <= len(refs.references) <= 48
    entries = json.loads((DEFAULT_FOLDER / "references.json").read_text())
    assert {e["file"] for e in entries} == {f"{n}.png" for n in refs.names}
    assert all(e["licence"] == "CC0-1.0" and e["source"] for e in entries)
    assert all(r.pixels.shape == (128, 128, 3) for r in refs.references)
    assert sum(p.stat().st_size for p in DEFAULT_FOLDER.iterdir()) < 3_000_000


def test_prompt_selects_by_tag_and_name_plural_and_negative():
    refs = load_references(DEFAULT_FOLDER)
    names = lambda idx: {refs.names[i] for i in idx}  # noqa: E731
    assert names(select(refs, "bricks")) == {"brick"}
    assert "pearls" in names(select(refs, "a pearl necklace"))
    assert len(select(refs, "")) == len(refs.names) == len(select(refs, "zzz unknown"))
    gems = names(select(refs, "gemstone", negative="red"))
    assert "sapphire_brilliant" in gems and "ruby_facets" not in gems


def shares(refs, prompt, negative=""):
    sel = match_prompt(refs, prompt, negative)
    return {refs.names[i]: round(s, 4) for i, s in zip(sel.indices, sel.shares, strict=True)}


def test_every_reference_a_word_names_shares_its_weight():
    refs = load_references(DEFAULT_FOLDER)
    assert shares(refs, "gold") == {"hammered_gold": 0.5, "rose_gold": 0.5}
    assert shares(refs, "golden") == shares(refs, "Gold!") == shares(refs, "gold")  # synonym, case
    leather = shares(refs, "leather")
    assert {"pebbled_leather", "suede"} <= set(leather) and len(set(leather.values())) == 1
    assert shares(refs, "rubies")["ruby_facets"] == 1.0  # plural "-ies"
    # Two words: each has half the weight, split among what it names.
    mixed = shares(refs, "gold leather")
    assert mixed["hammered_gold"] == mixed["rose_gold"] == 0.25
    assert sum(mixed.values()) == pytest.approx(1.0)
    # A reference named by both words gets both parts.
    shoe = shares(refs, "leather shoe")
    assert shoe["pebbled_leather"] > shoe["cork"] > 0 and shoe["pebbled_leather"] == shoe["suede"]


def test_unmatched_words_are_reported_not_dropped_silently():
    refs = load_references(DEFAULT_FOLDER)
    sel = match_prompt(refs, "a gold ring with sparkle, 2 of them")
    assert sel.unmatched == ("ring", "sparkle")  # stop words and numbers are not words to match
    assert sel.matches == (("gold", ("hammered_gold", "rose_gold")),)
    nothing = match_prompt(refs, "sparkle")
    assert nothing.unmatched == ("sparkle",) and len(nothing.indices) == len(refs.names)
    assert match_prompt(refs, "gem", negative="red").removed == ("ruby_facets",)


def test_synonyms_in_the_sidecar_are_tags(tmp_path):
    save(tmp_path, "a.png", seed=1)
    save(tmp_path, "b.png", seed=2)
    (tmp_path / "references.json").write_text(
        json.dumps([{"file": "a.png", "tags": "shiny", "synonyms": ["glossy"]}, {"file": "b.png"}])
    )
    refs = load_references(tmp_path)
    assert select(refs, "glossy") == select(refs, "shiny") == [0]


def test_weights_apply_to_names_and_tag_groups():
    refs = load_references(DEFAULT_FOLDER)
    idx = select(refs, "jewelry")
    weights = log_priors(refs, idx, (("gold", 2.0), ("pearls", -1.0)))
    priors = dict(zip([refs.names[i] for i in idx], weights, strict=True))
    assert priors["hammered_gold"] == priors["rose_gold"] == 2.0
    assert priors["pearls"] == -1.0 and priors["ruby_facets"] == 0.0


def test_modes_are_converted(tmp_path):
    for i, mode in enumerate(("L", "RGBA", "P", "I;16", "1")):
        save(tmp_path, f"m{i}.png", mode, seed=i)
    refs = load_references(tmp_path)
    assert len(refs.references) == 5 and all(r.pixels.shape == (24, 24, 3) for r in refs.references)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "has no images"),
        (lambda d: save(d, "a.png"), "is not a folder"),
        (lambda d: (save(d, "tiny.png", size=(8, 30)), d)[-1], "no usable images.*tiny.png is 8×30"),
        (lambda d: ((d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish"), d)[-1], "broken.png"),
        (lambda d: (save(d, "cmyk.jpg", "CMYK"), d)[-1], "CMYK"),
        (lambda d: (save(d, "a.png"), (d / "references.json").write_text("{oops"), d)[-1], "tag list"),
    ],
)
def test_bad_folders_give_clear_errors(tmp_path, make, message):
    target = make(tmp_path)
    with pytest.raises(ReferencesError, match=message):
        load_references(target)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(tmp_path):
    save(tmp_path, "a.png")
    tmp_path.chmod(0)
    try:
        with pytest.raises(ReferencesError, match="cannot read"):
            load_references(tmp_path)
    finally:
        tmp_path.chmod(0o755)


def test_engine_reports_bad_input_as_studio_errors(tmp_path):
    engine = PatchEngine()
    with pytest.raises(StudioError, match="locality"):
        list(engine.generate(Request(width=32, height=32, locality=1.5), threading.Event()))
    with pytest.raises(StudioError, match="no images"):
        list(engine.generate(Request(width=32, height=32, model=str(tmp_path)), threading.Event()))


def test_own_folder_is_cached_until_it_changes(tmp_path):
    engine = PatchEngine()
    save(tmp_path, "stripes_red.png", seed=1)
    save(tmp_path, "dots.png", seed=2)
    first = engine.references(str(tmp_path))
    assert engine.references(str(tmp_path)) is first
    (tmp_path / "references.json").write_text(json.dumps([{"file": "dots.png", "tags": ["Polka"]}]))
    second = engine.references(str(tmp_path))
    assert second is not first and select(second, "polka") == [0]
    done = list(
        engine.generate(
            Request(width=32, height=32, steps=2, model=str(tmp_path), prompt="red"), threading.Event()
        )
    )[-1]
    assert done.extras["references"] == ["stripes_red"] and done.extras["model"] == tmp_path.name


def test_fit_covers_and_crops_to_any_aspect():
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 30:50] = 255
    out = fit(pixels, 32, 64)
    assert out.shape == (64, 32, 3)
    assert out[:, 16].mean() > 200  # the centre stripe survives the crop


def test_engine_and_command_line_report_unmatched_words(tmp_path, capsys):
    from studio.cli.main import main

    done = list(
        PatchEngine().generate(
            Request(width=32, height=32, steps=1, prompt="gold sparkle"), threading.Event()
        )
    )[-1]
    assert done.extras["unmatched_words"] == ["sparkle"]
    assert done.extras["prompt_matches"] == {"gold": ["hammered_gold", "rose_gold"]}
    argv = ["generate", "--prompt", "golden sparkle", "--width", "32", "--height", "32", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "references hammered_gold 50%, rose_gold 50%" in err
    assert "note: no reference is tagged 'sparkle'" in err
