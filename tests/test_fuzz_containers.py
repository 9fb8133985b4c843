"""Structured fuzzing of the two containers: thousands of generated `.studio` and `.ora` files.

Each file starts from a valid one and takes a few mutations that hypothesis draws: manifest values
replaced by other JSON (wrong types, huge and negative numbers, hostile names), keys deleted or added,
the manifest's text damaged (NaN, 1e999, a stray bracket, a bad byte), stack.xml built from odd
attributes and elements, members renamed (`..`, absolute paths, backslashes, duplicates), dropped,
truncated, bit-flipped or swapped for other PNGs (other sizes and modes, bombs, broken ones).

Opening must end in a document that composites, or in the project's own error raised on purpose (not
by the last safety net in `studio.files.archive.loading`, which chains the exception it caught); the file
opened must be left as it was, and nothing may be written outside the temporary folder.
`derandomize=True` makes every run (and CI) try the same files; `max_pixels` keeps an accepted canvas
small so the whole run takes a few tens of seconds. A third run does the same to the metadata of PNGs
(the recipe, A1111 text and XMP that `studio-cli info` reads): it must become notes, never an exception.
"""

from __future__ import annotations

import io
import json
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import faults
import numpy as np
import pytest
from hostile_files import blank_png, bomb_png, write_zip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_fuzz import (
    EXAMPLES,
    FUZZ,
    MARKER,
    NAMES,
    json_change,
    json_places,
    name,
    same_files_in_every_run,
    with_changes,
)
from PIL import Image

from backend.request import Request
from studio.document import Document
from studio.files.archive import png_bytes
from studio.files.ora import import_ora
from studio.files.project import ProjectData, ProjectError, load_project, save_project
from studio.gallery import Result
from studio.layers import Layer

MAX_PIXELS = 1 << 16  # a larger canvas is refused before anything is decoded: keeps each example fast


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


# ----------------------------------------------------------------------------------------- ingredients


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


_RNG = np.random.default_rng(7)
PNGS = [
    png_bytes(_RNG.integers(0, 256, (16, 24, 4), dtype=np.uint8)),  # the canvas size
    png_bytes(_RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),  # a smaller layer
    png_bytes(np.zeros((16, 24), np.uint8)),  # a mask
    png_bytes(_RNG.integers(0, 256, (1, 1, 3), dtype=np.uint8)),
    _png(Image.fromarray(_RNG.integers(0, 65536, (16, 24), dtype=np.uint16))),  # 16-bit grey
    _png(Image.fromarray(_RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)).quantize(8)),  # palette
    blank_png(300, 300),  # larger than the canvas
    bomb_png(),  # declares 100000²
    bomb_png(20000, 3),
    png_bytes(_RNG.integers(0, 256, (16, 24, 4), dtype=np.uint8))[:60],  # truncated
    b"\x89PNG\r\n\x1a\n" + bytes(40),  # a signature and nothing
    b"not a png at all",
    b"",
]


def _base_project() -> tuple[dict[str, Any], dict[str, bytes]]:
    """A valid project's manifest and other members: two layers (one small, offset), a result, an
    attribution map, a mask and a history."""
    rng = np.random.default_rng(3)
    background = Layer("Background", rng.integers(0, 256, (16, 24, 4), dtype=np.uint8), id="bg")
    ink = Layer("ink", rng.integers(0, 256, (5, 7, 4), dtype=np.uint8), 0.5, id="ink", x=3, y=4)
    image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    attribution = rng.random((16, 24, 2), dtype=np.float32)
    request = Request(prompt="p", width=24, height=16)
    result = Result(image, request, id="r1", created=1.0, attribution=attribution)
    mask = np.zeros((16, 24), np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.studio"
        save_project(path, ProjectData(24, 16, [background, ink], mask, "ink", [result], ["p", "q"]))
        with zipfile.ZipFile(path) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    manifest["save_id"] = "0" * 32  # a fixed base: the same mutations give the same files on every run
    return manifest, members


BASE_MANIFEST, BASE_MEMBERS = _base_project()
PLACES = json_places(BASE_MANIFEST)[1:]


# -------------------------------------------------------------------------------------------- mutations

member_change = st.one_of(
    st.tuples(st.just("rename"), st.integers(0, 20), name),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("duplicate"), st.integers(0, 20), st.binary(max_size=40)),
    st.tuples(st.just("png"), st.integers(0, 20), st.integers(0, len(PNGS) - 1)),
    st.tuples(st.just("bytes"), st.integers(0, 20), st.binary(max_size=64)),
    st.tuples(st.just("flip"), st.integers(0, 20), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 20), st.floats(0, 1)),
    st.tuples(st.just("add"), name, st.integers(0, len(PNGS) - 1)),
)


# Most files keep their members as they are, so what the manifest or stack.xml says gets tried too.
member_changes = st.one_of(st.just([]), st.just([]), st.lists(member_change, min_size=1, max_size=3))


def _change_members(members: list[tuple[str, bytes]], changes: list[tuple]) -> list[tuple[str, bytes]]:
    members = list(members)
    for change in changes:
        kind = change[0]
        if kind == "add":
            members.append((change[1], PNGS[change[2]]))
            continue
        if not members:
            continue
        i = change[1] % len(members)
        member, content = members[i]
        if kind == "rename":
            members[i] = (change[2], content)
        elif kind == "drop":
            members.pop(i)
        elif kind == "duplicate":
            members.append((member, change[2] or content))
        elif kind == "png":
            members[i] = (member, PNGS[change[2]])
        elif kind == "bytes":
            members[i] = (member, change[2])
        elif kind == "flip" and content:
            data = bytearray(content)
            data[change[2] % len(data)] ^= change[3]
            members[i] = (member, bytes(data))
        elif kind == "cut":
            members[i] = (member, content[: int(len(content) * change[2])])
    return members


manifest_change = json_change(PLACES)
text_damage = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.integers(0, 10**5), st.sampled_from([b"NaN", b"1e999", b"[", b"}", b"\xff", b"-Infinity"])),
)


printable = st.characters(codec="utf-8", min_codepoint=32, exclude_characters="\x7f")
attribute = st.one_of(
    st.sampled_from(["nan", "inf", "-1e9", "1e999", "", "abc", "9" * 12, "-0", " 3", "0x10", "hidden"]),
    st.text(alphabet=printable, max_size=8),
)


def _mostly(*plausible: str) -> st.SearchStrategy[str]:
    """Values a real file holds, most of the time; otherwise anything."""
    real = st.sampled_from(plausible)
    return st.one_of(real, real, real, real, attribute)


layer_attributes = st.fixed_dictionaries(
    {},
    optional={
        "x": _mostly("0", "3", "-4", "20", "100"),
        "y": _mostly("0", "2", "-7", "15", "100"),
        "opacity": _mostly("0", "0.5", "1", "1.0", "0.25"),
        "visibility": _mostly("visible", "hidden"),
        "name": st.one_of(st.text(alphabet=printable, max_size=12), st.sampled_from(NAMES)),
        "composite-op": _mostly("svg:src-over", "svg:multiply"),
    },
)


def _stack_xml(size: dict[str, str], layers: list[dict[str, str]], nest: bool, extra: str) -> bytes:
    root = ET.Element("image", {"version": "0.0.5", **size})
    parent = ET.SubElement(root, "stack")
    for i, attributes in enumerate(layers):
        if nest and i == 1:
            parent = ET.SubElement(parent, "stack")
        ET.SubElement(parent, "layer", {k: v for k, v in attributes.items() if "\x00" not in v})
    text = ET.tostring(root, encoding="unicode")
    return (text.replace("</stack>", extra + "</stack>", 1) if extra else text).encode("utf-8")


# -------------------------------------------------------------------------------------------------- runs


def _open(kind: str, path: Path) -> str:
    """ "refused" or "opened" (and composited); anything else is a failure of the test."""
    try:
        if kind == "studio":
            data = load_project(path, max_pixels=MAX_PIXELS)
        else:
            width, height, layers = import_ora(path, max_pixels=MAX_PIXELS)
            data = ProjectData(width, height, layers, np.zeros((height, width), np.uint8))
    except ProjectError as exc:
        # Refused on purpose: the safety net chains what it caught, a deliberate refusal does not.
        assert exc.__cause__ is None, f"{exc} <- {exc.__cause__!r}"
        return "refused"
    document = Document(8, 8)
    data.apply_to(document)
    assert document.composite().shape == (data.height, data.width, 3)
    return "opened"


class Tally:
    """What the generated files did, and the bytes of them that opening changed (it must change none)."""

    def __init__(self, folder: Path) -> None:
        self.counts = {"opened": 0, "refused": 0}
        self.lost = 0
        self.folder = folder

    def open(self, kind: str, path: Path) -> None:
        before = faults.snapshot(files=[path])
        self.counts[_open(kind, path)] += 1
        self.lost += faults.bytes_lost(before, faults.snapshot(files=[path]))

    def check_and_record(self, label: str, path: Path, work: Path) -> None:
        assert sum(self.counts.values()) == EXAMPLES and self.counts["opened"] > 0, self.counts
        assert sorted(p.name for p in self.folder.iterdir()) == ["cwd", path.name] and not any(work.iterdir())
        for place in (work, self.folder, self.folder.parent, Path(tempfile.gettempdir()), Path("/")):
            assert not any(MARKER in p.name for p in place.iterdir()), f"a fuzzed file wrote into {place}"
        outcome = (
            f"{self.counts['refused']} refused with the project's own error, {self.counts['opened']} opened "
            "and composited; no other exception, nothing written"
        )
        faults.record(
            "fuzzing", f"{EXAMPLES} generated {label} files (hypothesis, derandomized)", outcome, self.lost
        )


@pytest.fixture
def tally(tmp_path, monkeypatch):
    """A tally over a fresh folder, with the working directory moved into an empty folder inside it."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    same_files_in_every_run(monkeypatch)
    return Tally(tmp_path)


def test_fuzzed_projects_open_or_are_refused_cleanly(tmp_path, tally):
    path = tmp_path / "fuzzed.studio"

    @FUZZ
    @given(st.lists(manifest_change, max_size=3), member_changes, text_damage)
    def run(manifest_changes, member_changes, damage):
        text = json.dumps(with_changes(BASE_MANIFEST, manifest_changes)).encode()
        if damage is not None:
            at = damage[0] % (len(text) + 1)
            text = text[:at] + damage[1] + text[at:]
        members = _change_members([*BASE_MEMBERS.items(), ("manifest.json", text)], member_changes)
        write_zip(path, members)
        tally.open("studio", path)

    run()
    tally.check_and_record(".studio", path, tmp_path / "cwd")


def test_fuzzed_openraster_files_open_or_are_refused_cleanly(tmp_path, tally):
    path = tmp_path / "fuzzed.ora"
    sources = st.sampled_from(
        [
            "data/a.png",
            "data/a.png",
            "data/b.png",
            "mergedimage.png",
            "missing.png",
            "../a.png",
            "/etc/passwd",
            "",
        ]
    )
    side = {"w": "24", "h": "16"}
    extras = ["", "<layer/>", "<foo bar='1'/>", "<!-- x -->", "<layer src='data/a.png'><layer/></layer>"]

    @FUZZ
    @given(
        st.fixed_dictionaries(
            {k: st.one_of(st.just(v), st.just(v), st.just(v), attribute) for k, v in side.items()}
        ),
        st.lists(st.tuples(sources, layer_attributes), min_size=1, max_size=4),
        st.booleans(),
        st.sampled_from(extras),
        member_changes,
        st.sampled_from([b"image/openraster", b"", b"application/zip"]),
    )
    def run(size, layers, nest, extra, member_changes, mimetype):
        stack = _stack_xml(size, [{"src": src, **attributes} for src, attributes in layers], nest, extra)
        members = [("mimetype", mimetype), ("stack.xml", stack), ("data/a.png", PNGS[0])]
        members += [("data/b.png", PNGS[1]), ("mergedimage.png", PNGS[0])]
        write_zip(path, _change_members(members, member_changes))
        tally.open("ora", path)

    run()
    tally.check_and_record(".ora", path, tmp_path / "cwd")


def test_fuzzed_png_metadata_becomes_notes_never_exceptions(tmp_path):
    """`studio-cli info` on a PNG whose recipe, A1111 text and XMP are mutated: a note, never a crash."""
    from PIL.PngImagePlugin import PngInfo

    from backend import strict_json
    from studio.cli.info import describe, describe_json
    from studio.files.pngmeta import read_png_metadata
    from studio.recipe import recipe_to_dict

    base = recipe_to_dict(Request(prompt="p", width=16, height=16), {"model_hash": "abc"})
    base["lineage"] = {"id": "x", "parents": ["y"], "painted": False, "chain": [{"id": "y", "parents": []}]}
    places = json_places(base)[1:]
    path = tmp_path / "fuzzed.png"
    counts = {"with a request": 0, "without": 0, "lost": 0}
    parameters = st.sampled_from(
        ["p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 16x16", "Steps: x, Size: 9", "", "\n\n"]
    )

    @settings(
        max_examples=400,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(json_change(places), max_size=3), text_damage, parameters, st.booleans())
    def run(changes, damage, a1111, xmp):
        recipe = with_changes(base, changes)
        text = json.dumps(recipe).encode()
        if damage is not None:
            at = damage[0] % (len(text) + 1)
            text = text[:at] + damage[1] + text[at:]
        info = PngInfo()
        info.add_itxt("studio:recipe", text.decode("utf-8", "replace"))
        info.add_text("parameters", a1111)
        if xmp:
            info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta xmlns:x='adobe:ns:meta/'><oops")
        Image.new("RGB", (16, 16)).save(path, pnginfo=info)
        before = faults.snapshot(files=[path])
        meta = read_png_metadata(path)  # must not raise: unreadable metadata is a note
        counts["lost"] += faults.bytes_lost(before, faults.snapshot(files=[path]))
        strict_json.loads(describe_json(str(path), meta))
        describe(str(path), meta)
        counts["with a request" if meta.request is not None else "without"] += 1

    run()
    assert counts["with a request"] > 0 and counts["without"] > 0, counts
    outcome = (
        f"{counts['with a request']} gave a request, {counts['without']} only notes; `info` (text and JSON) "
        "never raised"
    )
    faults.record(
        "fuzzing", "400 PNGs with mutated recipe, A1111 text and XMP (hypothesis)", outcome, counts["lost"]
    )
