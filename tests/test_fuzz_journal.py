"""Structured fuzzing of the recovery journal: what a crash, a failing disk or another version of the
studio may leave beside a project, read back when the window starts.

A real journal is written (a saved project, then painting, layers, results and prompts, then a crash);
each example changes it: a record's JSON header set to other JSON, a key deleted or added, its arrays
swapped for others (other shapes and types), records dropped, repeated or reordered, the file cut short or
a byte flipped. Changed records are framed again with a correct CRC, so the damage reaches the replay and
is not merely stopped by the frame check. Finding the journal must never raise; restoring must end in a
document that composites, or in the project's own error raised on purpose (ProjectError, no chained
exception) — the window offers, restores or says why, and never crashes at start-up.
"""

from __future__ import annotations

import json

import crash_app
import faults
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from json_fuzz import FUZZ, json_change, json_places, same_files_in_every_run, with_changes

from studio.document import Document
from studio.files.journal import Journal, find_recovery, journal_path, recover
from studio.files.journal_records import decode_all, encode
from studio.files.project import ProjectData, ProjectError, save_project
from studio.gallery import Gallery

EXAMPLES = FUZZ.max_examples  # as many as each container


@pytest.fixture(autouse=True, scope="module")
def _fault_table(request):
    yield
    faults.module_finished(request)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A saved project and the journal a crash left beside it: (project bytes, journal records)."""
    folder = tmp_path_factory.mktemp("journal")
    project = folder / "work.studio"
    doc, gallery, history = Document(24, 16), Gallery(), ["first"]
    journal = Journal(doc, gallery, folder / "data", history=lambda: history)
    journal.start(project, save_project(project, doc, gallery, history))
    for op in crash_app.scripted_ops(doc, gallery, history, 5)[:10]:
        op()
    journal.record_history()
    journal.abandon()  # the crash
    records, torn = decode_all(journal_path(project, folder / "data").read_bytes())
    journal.close()
    assert torn == 0 and len(records) > 6
    assert {h["op"] for h, _ in records} >= {"base", "add_layer", "pixels"}
    return project.read_bytes(), records


ARRAYS = [
    np.zeros((0,), np.uint8),
    np.zeros((4, 4, 4), np.uint8),
    np.full((16, 24, 4), 200, np.uint8),
    np.zeros((30, 40, 4), np.uint8),  # larger than the canvas
    np.zeros((16, 24), np.uint8),
    np.zeros((4, 4, 3), np.float32),
    np.zeros((2, 2, 4), np.int64),
]
record_change = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("repeat"), st.integers(0, 40)),
    st.tuples(st.just("swap"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("arrays"), st.integers(0, 40), st.lists(st.integers(0, len(ARRAYS) - 1), max_size=2)),
)
byte_damage = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
)


def _restore(data_dir, project) -> str:
    """ "restored" (and composited), "refused" or "nothing offered"; anything else fails the test."""
    found = find_recovery(data_dir, [project])  # at start-up: must never raise
    if found is None:
        return "nothing offered"
    try:
        data = recover(found)
    except ProjectError as exc:
        assert exc.__cause__ is None, f"{exc} <- {exc.__cause__!r}"
        return "refused"
    assert isinstance(data, ProjectData)
    document = Document(8, 8)
    data.apply_to(document)
    assert document.composite().shape == (data.height, data.width, 3)
    return "restored"


def test_fuzzed_journals_restore_or_are_refused_cleanly(tmp_path, written, monkeypatch):
    same_files_in_every_run(monkeypatch)
    project_bytes, records = written
    project = tmp_path / "work.studio"
    data_dir = tmp_path / "data"
    path = journal_path(project, data_dir)
    places = [(i, place) for i, (header, _) in enumerate(records) for place in json_places(header)[1:]]
    counts = {"restored": 0, "refused": 0, "nothing offered": 0}
    lost = 0

    @FUZZ
    @given(
        st.integers(0, len(records) - 1),
        st.lists(json_change([p for _, p in places]), max_size=3),
        st.lists(record_change, max_size=2),
        byte_damage,
    )
    def run(target, header_changes, record_changes, damage):
        changed = [(dict(h), list(a)) for h, a in records]
        header, arrays = changed[target]
        header = with_changes({k: v for k, v in header.items() if k != "arrays"}, header_changes)
        changed[target] = (header if isinstance(header, dict) else {"op": header}, arrays)
        for change in record_changes:
            i = change[1] % len(changed)
            if change[0] == "drop":
                changed.pop(i)
            elif change[0] == "repeat":
                changed.insert(i, changed[i])
            elif change[0] == "swap":
                j = change[2] % len(changed)
                changed[i], changed[j] = changed[j], changed[i]
            else:
                changed[i] = (changed[i][0], [ARRAYS[n] for n in change[2]])
            if not changed:
                break
        data = b"".join(encode({k: v for k, v in h.items() if k != "arrays"}, a) for h, a in changed)
        if damage is not None and data:
            if damage[0] == "cut":
                data = data[: int(len(data) * damage[1])]
            else:
                flipped = bytearray(data)
                flipped[damage[1] % len(flipped)] ^= damage[2]
                data = bytes(flipped)
        nonlocal lost
        project.write_bytes(project_bytes)
        path.write_bytes(data)
        before = faults.snapshot(files=[project])
        counts[_restore(data_dir, project)] += 1
        lost += faults.bytes_lost(before, faults.snapshot(files=[project]))  # restoring never writes it

    run()
    assert sum(counts.values()) == EXAMPLES and counts["restored"] > 0 and counts["refused"] > 0, counts
    faults.record(
        "fuzzing",
        f"{EXAMPLES} generated recovery journals (hypothesis, derandomized; changed records framed again)",
        f"{counts['refused']} refused with the project's own error, {counts['restored']} restored and "
        f"composited, {counts['nothing offered']} offered nothing; no other exception",
        lost,
    )


def test_the_unchanged_journal_restores_the_work(tmp_path, written):
    project_bytes, records = written
    project = tmp_path / "work.studio"
    project.write_bytes(project_bytes)
    journal_path(project, tmp_path / "data").write_bytes(b"".join(encode(h, a) for h, a in records))
    assert _restore(tmp_path / "data", project) == "restored"
    assert json.dumps(records[0][0]["op"]) == '"base"'
