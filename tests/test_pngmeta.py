"""PNG metadata: recipe, A1111 text, XMP provenance and lineage written, read back, and read from others."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.errors import ImageError
from backend.images import Picture
from backend.request import Concept, Request
from studio.a1111 import to_a1111
from studio.files.pngmeta import (
    COMPOSITE,
    GENERATED,
    RECIPE_KEY,
    XMP_KEY,
    ExportError,
    read_png_metadata,
    save_png,
)
from studio.recipe import Ancestor, Provenance, compact_recipe

RNG = np.random.default_rng(3)
IMAGE = RNG.integers(0, 256, (40, 32, 3), dtype=np.uint8)
INIT = Picture(RNG.integers(0, 256, (40, 32, 3), dtype=np.uint8))
MASK = Picture(RNG.integers(0, 256, (40, 32), dtype=np.uint8))
REQUEST = Request(
    prompt="a lighthouse, stormy sea\nünïcode ✓ <&>",
    negative_prompt="calm",
    seed=42,
    steps=6,
    width=32,
    height=40,
    init_image=INIT,
    strength=0.6,
    concepts=(Concept("ornate", "plain", 1.0, 0.5),),
    reference_weights=(("sea", 1.5),),
)
EXTRAS = {
    "engine": "patch",
    "model": "references",
    "model_hash": "c0ffee" * 10,
    "references": ["sea", "rock"],
    "reference_shares": {"sea": 0.75, "rock": 0.25},
}


def _xmp(path) -> ET.Element:
    with Image.open(path) as im:
        im.load()
        return ET.fromstring(im.text[XMP_KEY].encode())


def test_written_metadata_reads_back(tmp_path):
    parent = Ancestor(
        "parent01", ("grand01",), True, compact_recipe(Request(prompt="older"), {"model_hash": "1"})
    )
    prov = Provenance("child01", ("parent01",), painted=False, chain=(parent, Ancestor("grand01")))
    path = tmp_path / "out.png"
    assert save_png(path, IMAGE, REQUEST, EXTRAS, prov) == prov

    meta = read_png_metadata(path)
    assert meta.has_recipe and meta.recipe_from == "studio"
    assert meta.request == REQUEST
    assert meta.extras == EXTRAS
    assert meta.provenance == prov
    assert meta.source_type == GENERATED
    assert meta.edited is False
    assert meta.parameters == to_a1111(REQUEST, EXTRAS)
    assert meta.notes == ()
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), IMAGE)


def test_default_provenance_is_a_fresh_generation_named_by_its_pixels(tmp_path):
    prov = save_png(tmp_path / "a.png", IMAGE, Request())
    assert prov == Provenance(Picture(IMAGE).digest[:16])
    assert read_png_metadata(tmp_path / "a.png").provenance == prov


def test_digital_source_type_switches_with_painted(tmp_path):
    save_png(tmp_path / "pure.png", IMAGE, Request())
    save_png(tmp_path / "painted.png", IMAGE, Request(), provenance=Provenance("x", painted=True))
    save_png(tmp_path / "inpaint.png", IMAGE, Request(init_image=INIT, mask=MASK, width=32, height=40))
    assert read_png_metadata(tmp_path / "pure.png").source_type == GENERATED
    assert read_png_metadata(tmp_path / "painted.png").source_type == COMPOSITE
    assert read_png_metadata(tmp_path / "inpaint.png").source_type == COMPOSITE


def test_xmp_is_well_formed_and_says_everything(tmp_path):
    path = tmp_path / "x.png"
    # Control characters are legal in a prompt but not in XML: the XMP must still parse.
    request = REQUEST.replace(prompt="bell \x07 and \x1b[31m escape", model="/refs/my, sea")
    save_png(path, IMAGE, request, EXTRAS, Provenance("id-1", ("p-1", "p-2"), painted=True))
    root = _xmp(path)
    ns = {
        "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
        "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
        "studio": "https://ns.studio.invalid/xmp/1.0/",
    }
    desc = root.find(".//rdf:Description", ns)
    attr = {k.split("}")[1]: v for k, v in desc.attrib.items() if "}" in k}
    assert attr["DigitalSourceType"] == COMPOSITE
    assert (
        attr["Engine"] == "patch" and attr["Model"] == "/refs/my, sea" and attr["ModelName"] == "references"
    )
    assert attr["ModelHash"] == "c0ffee" * 10 and attr["ImageID"] == "id-1" and attr["Painted"] == "True"
    assert attr["AIPromptInformation"] == "bell  and [31m escape"
    assert [li.text for li in desc.findall("studio:Parents/rdf:Seq/rdf:li", ns)] == ["p-1", "p-2"]
    refs = desc.findall("studio:References/rdf:Seq/rdf:li", ns)
    shares = {r.find("studio:Name", ns).text: float(r.find("studio:Share", ns).text) for r in refs}
    assert shares == {"sea": 0.75, "rock": 0.25}
    assert read_png_metadata(path).request == request  # the recipe keeps the prompt as typed


def test_parameters_from_another_tool_read_as_a_request(tmp_path):
    info = PngInfo()
    info.add_text(
        "parameters",
        "a red fox\nNegative prompt: blurry\nSteps: 25, Sampler: Euler a, Schedule type: Automatic, "
        "CFG scale: 7, Seed: 99, Size: 32x40, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        'Lora hashes: "fox: 1234abcd", Version: v1.10.1',
    )
    path = tmp_path / "a1111.png"
    Image.fromarray(IMAGE).save(path, pnginfo=info)
    meta = read_png_metadata(path)
    assert meta.recipe_from == "a1111" and meta.provenance is None and meta.edited is None
    assert meta.request == Request(
        engine="diffusers",
        model="v1-5-pruned-emaonly",
        prompt="a red fox",
        negative_prompt="blurry",
        steps=25,
        scheduler="euler_a",
        guidance=7.0,
        seed=99,
        width=32,
        height=40,
    )
    assert meta.extras == {
        "model_hash": "6ce0161689",
        "model_name": "v1-5-pruned-emaonly",
        "lora_hashes": {"fox": "1234abcd"},
    }


def test_a1111_jpeg_user_comment_reads(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + "a jpeg\nSteps: 5, Sampler: Euler, Seed: 7".encode(
        "utf-16-be"
    )
    path = tmp_path / "a1111.jpg"
    Image.fromarray(IMAGE).save(path, exif=exif)
    meta = read_png_metadata(path)
    assert meta.request is not None and meta.request.prompt == "a jpeg" and meta.request.seed == 7


def test_png_without_metadata_reads_as_no_recipe(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(IMAGE).save(path)
    meta = read_png_metadata(path)
    assert not meta.has_recipe and meta.request is None and meta.provenance is None
    assert meta.notes == () and meta.source_type is None


def test_broken_recipe_falls_back_to_parameters_with_a_note(tmp_path):
    info = PngInfo()
    info.add_text("parameters", to_a1111(Request(prompt="kept", seed=5)))
    info.add_itxt(RECIPE_KEY, '{"format": "studio-recipe", "version": 1, "request": {"seed": "x"}}')
    info.add_itxt(XMP_KEY, "<not xml")
    path = tmp_path / "broken.png"
    Image.fromarray(IMAGE).save(path, pnginfo=info)
    meta = read_png_metadata(path)
    assert meta.request == Request(prompt="kept", seed=5)
    assert meta.recipe_from == "a1111"
    assert any("studio recipe is unreadable" in n for n in meta.notes)
    assert any("XMP" in n for n in meta.notes)


def test_edits_by_other_programs_show(tmp_path):
    path = tmp_path / "e.png"
    save_png(path, IMAGE, Request())
    with Image.open(path) as im:
        im.load()
        text = dict(im.text)
    edited = IMAGE.copy()
    edited[0, 0] = 255 - edited[0, 0]
    info = PngInfo()
    for key, value in text.items():
        info.add_itxt(key, value)
    Image.fromarray(edited).save(path, pnginfo=info)  # metadata kept, pixels changed
    assert read_png_metadata(path).edited is True


def test_big_recipe_with_embedded_images_reads(tmp_path):
    # Pillow refuses compressed text over 1 MB; noise images make a recipe bigger than that.
    big = Picture(RNG.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    request = Request(
        width=512, height=512, init_image=big, mask=Picture(RNG.integers(0, 256, (512, 512), dtype=np.uint8))
    )
    save_png(tmp_path / "big.png", big.pixels, request)
    assert read_png_metadata(tmp_path / "big.png").request == request


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "same name, ünï.png"
    path.write_bytes(b"old")
    save_png(path, IMAGE, Request(prompt="new"))
    assert read_png_metadata(path).request.prompt == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_write_keeps_the_old_file_and_says_why(tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="cannot write"):
        save_png(tmp_path / "missing" / "x.png", IMAGE, Request())
    path = tmp_path / "keep.png"
    path.write_bytes(b"old")

    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(ExportError, match="No space left"):
        save_png(path, IMAGE, Request(prompt="x"))
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_not_an_image_is_an_image_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError):
        read_png_metadata(path)
