"""What the fuzzing tests share: hypothesis settings, hostile JSON values, and changes to a JSON document.

tests/test_fuzz_containers.py mutates `.studio` manifests, `.ora` files and PNG metadata with these;
tests/test_fuzz_journal.py the headers of recovery-journal records.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = 1500  # files per container
MARKER = "fuzz-escape-marker"  # written nowhere unless a file escapes its folder
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Member names and text a hostile file might carry: escapes, odd bytes, huge ones.
NAMES = [
    "layers/bg.png",
    "layers/ink.png",
    "mask.png",
    "gallery/r1.png",
    "gallery/r1.attr.npy",
    "data/a.png",
    "data/b.png",
    "stack.xml",
    "manifest.json",
    "mimetype",
    f"../{MARKER}.txt",
    f"/tmp/{MARKER}.txt",
    f"C:\\{MARKER}.txt",
    f"..\\..\\{MARKER}.txt",
    "layers/../../x.png",
    "layers//bg.png",
    "./mask.png",
    "layers/",
    "a\x00b.png",
    "ünïcødé ✓/名前.png",
    "x" * 2000,
]
name = st.one_of(st.sampled_from(NAMES), st.text(max_size=24))
number = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, -1, 2**31, 2**63, 10**30, 16384, 8192, 100000]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
leaf = st.one_of(st.none(), st.booleans(), number, name)
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def json_places(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a JSON value, as a tuple of keys and indices."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += json_places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += json_places(item, (*path, i))
    return found


def json_change(places: list[tuple]) -> st.SearchStrategy[tuple]:
    """One change to a JSON document: set a place to other JSON, delete it, or add a key beside it."""
    shallow = [p for p in places if len(p) <= 2]
    return st.one_of(
        st.tuples(st.just("set"), st.sampled_from(places), json_value),
        st.tuples(st.just("delete"), st.sampled_from(places)),
        st.tuples(st.just("add"), st.sampled_from(shallow), st.text(max_size=10), json_value),
    )


def with_changes(document: Any, changes: list[tuple]) -> Any:
    """A copy of a JSON document with the changes applied."""
    document = json.loads(json.dumps(document))
    for change in changes:
        node, place = document, change[1]
        try:
            for key in place[:-1]:
                node = node[key]
            if change[0] == "set":
                node[place[-1]] = change[2]
            elif change[0] == "delete":
                del node[place[-1]]
            elif isinstance(node[place[-1]], dict):
                node[place[-1]][change[2]] = change[3]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or retyped this place
    return document


def same_files_in_every_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis mixes constants from every local module loaded so far into what it draws, so a run of
    this file alone and the whole suite would try different files; without them, derandomize decides."""
    from hypothesis.internal.conjecture import providers

    if hasattr(providers, "_get_local_constants") and hasattr(providers, "Constants"):
        monkeypatch.setattr(providers, "_get_local_constants", providers.Constants)
        monkeypatch.setattr(providers, "CONSTANTS_CACHE", type(providers.CONSTANTS_CACHE)(1024))
